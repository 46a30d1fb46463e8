# The suite runs on loaded, shared machines: hypothesis judges correctness
# here, never speed, so its per-example deadline and too-slow checks are off.
from hypothesis import HealthCheck, settings

settings.register_profile(
    "lttx", deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("lttx")
