"""HTTP core: routing, JSON bodies with limits, the spec's error shape, CORS, request ids."""
