# Factory settings for lmp-device-register-rs (meta-subscriber-overrides).
#
# They apply to every machine and distro of the factory, so they carry no
# machine or distro override; oelint-adv's Yocto Project Compatible check
# (oelint.vars.noncoreoverride, meant for layers published as compatible) is
# silenced line by line below.

# Where this recipe fetches the agent from (required: parsing stops while it
# is unset). SRCREV in the recipe pins the commit.
# nooelint: oelint.vars.noncoreoverride
LMP_DEVICE_REGISTER_RS_GIT = "git://git.example.com/lmp-device-register-rs.git;protocol=https"

# Every device registered by this image is a production device.
# nooelint: oelint.vars.noncoreoverride
PACKAGECONFIG:append = " production"

# This factory's devices only ever register with LmP: leave the other
# profiles out of the binary.
# nooelint: oelint.vars.noncoreoverride
PACKAGECONFIG:remove = "losant tii azure-dps"

# Register against the factory's own reference server on the production line
# network instead of api.foundries.io (192.0.2.10 is a documentation address).
# nooelint: oelint.vars.noncoreoverride
LMP_DEVICE_API = "http://192.0.2.10/sign"

# Name devices after /etc/hostname instead of their UUID.
#LMP_DEVICE_REGISTER_USE_HOSTNAME = "1"
