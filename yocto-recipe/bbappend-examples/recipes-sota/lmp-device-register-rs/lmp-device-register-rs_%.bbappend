# Factory settings for lmp-device-register-rs (meta-subscriber-overrides).

# Every device registered by this image is a production device.
PACKAGECONFIG:append = " production"

# Register against the factory's own reference server on the production line
# network instead of api.foundries.io (192.0.2.10 is a documentation address).
LMP_DEVICE_API = "http://192.0.2.10/sign"

# Name devices after /etc/hostname instead of their UUID.
#LMP_DEVICE_REGISTER_USE_HOSTNAME = "1"
