# A twistd plugin: `twistd -n lttx --port 2025`.  Imports nothing of LTtx's
# until it is used, so `twistd --help` stays fast and never fails on it.
from twisted.application.service import ServiceMaker

lttx = ServiceMaker(
    "LTtx",
    "lttx.tap",
    "LTtx data center: cloud variables, channels and files",
    "lttx",
)
