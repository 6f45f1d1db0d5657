"""`make package`: what goes into each Lambda artifact (``catalogue``), how it is built and
checked (``build``), and the template's functions and resources as plain data (``template``)."""
