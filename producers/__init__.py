"""Publishing to Kinesis: the orders-service publisher and dataset loaders."""
