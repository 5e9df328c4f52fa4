"""Load generators and measurement tools for eventpipe (throughput driver, locust user).

Never imported by the pipeline itself: nothing outside benchmarks/ may depend on this package.
"""
