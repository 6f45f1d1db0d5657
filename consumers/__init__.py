"""The batch processor (pure core), its adapters and the DynamoDB stores."""
