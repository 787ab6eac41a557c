"""advisor: which hardware, which runtime and which settings serve this model cheapest within its latency SLO."""

__version__ = "0.1.0"
