SUMMARY = "Registers a Linux microPlatform device with its factory (Rust)"
DESCRIPTION = "One binary that replaces the C++ lmp-device-register and the \
lmp-device-auto-register script: EC P-256 key (software or PKCS#11), CSR, \
certificates and sota.toml, plus a first-boot systemd unit."
HOMEPAGE = "https://github.com/foundriesio/lmp-device-register"
SECTION = "admin"
LICENSE = "BSD-3-Clause"
LIC_FILES_CHKSUM = "file://LICENSE;md5=6afcde2869e0bc53d6d57e2f970d28ec"

# Named -rs so that it can sit beside meta-lmp's C++ lmp-device-register_git.bb
# in the same layer stack; the package replaces that one at run time (see
# RPROVIDES/RCONFLICTS below). Pick it for an image with
#   PREFERRED_RPROVIDER_lmp-device-register = "lmp-device-register-rs"
#
# Rust: Cargo.toml's rust-version is 1.89 (uuid 1.29 in Cargo.lock needs it).
# Yocto releases and the Rust they ship:
#   scarthgap (5.0 LTS)  1.75    too old: needs a newer Rust layer
#   styhead   (5.1)      1.79    too old (public CI matrices; unverified here)
#   walnascar (5.2)      1.84    too old (public CI matrices; unverified here)
#   whinlatter (5.3)     1.90    builds (unverified: from oe-core's rust_1.90.0
#                                recipe of that period)
#   wrynose   (6.0 LTS)  1.94.1  builds; meta-lmp main is on wrynose
PV = "0.1.0+git"

# The repository this file lives in. A layer pins SRCREV to a release commit;
# AUTOREV follows main, whose Cargo.lock always matches the crates .inc next
# to this recipe (tests/packaging.rs checks that).
SRC_URI = "git://github.com/foundriesio/lmp-device-register.git;protocol=https;branch=main"
SRCREV = "${AUTOREV}"
# The git fetcher unpacks to ${UNPACKDIR}/${BB_GIT_DEFAULT_DESTSUFFIX} on
# whinlatter and later (S = "${WORKDIR}/git" is an error on wrynose).
S = "${UNPACKDIR}/${BB_GIT_DEFAULT_DESTSUFFIX}"

# cargo builds with --frozen from an offline vendor directory: every crates.io
# package of Cargo.lock, dev-dependencies included, is fetched through this
# file. Refresh it with yocto-recipe/gen-crates-inc.py (or, identically,
# "bitbake -c update_crates lmp-device-register-rs", which writes ${BPN}-crates.inc).
require ${BPN}-crates.inc

# cargo: "cargo build --frozen --release" of the root package and installs
# every binary target (there is one: lmp-device-register). No DEPENDS: TLS is
# rustls with ring (C and assembly, built with the target compiler), PKCS#11
# modules are loaded with dlopen at run time.
inherit cargo cargo-update-recipe-crates systemd

# Build-time defaults, read with option_env! by src/settings.rs. Names of the
# C++ recipe's variables, so existing factory bbappends keep working.
# (src/clock.rs also reads SOURCE_DATE_EPOCH, which OE exports to every task:
# a clock earlier than the build is treated as not yet set.)
LMP_DEVICE_API ?= "https://api.foundries.io/ota/devices/"
LMP_OAUTH_API ?= "https://app.foundries.io/oauth"
export HARDWARE_ID = "${MACHINE}"
export DEVICE_API = "${LMP_DEVICE_API}"
export OAUTH_BASE = "${LMP_OAUTH_API}"
# "1" marks every device registered by this image as a production device
# (businessCategory=production in the CSR) unless -p or the PRODUCTION
# environment variable says otherwise on the device.
PACKAGECONFIG ??= ""
PACKAGECONFIG[production] = ",,"
export PRODUCTION = "${@bb.utils.contains('PACKAGECONFIG', 'production', '1', '0', d)}"

# The binary carries MACHINE as its default hardware id, so the package differs
# between machines of one tune.
PACKAGE_ARCH = "${MACHINE_ARCH}"

# Set to "1" to register with the device's /etc/hostname as its name (the
# LMP_AUTO_REGISTER_USE_HOSTNAME of lmp-device-auto-register).
LMP_DEVICE_REGISTER_USE_HOSTNAME ??= ""

do_install:append() {
	install -d ${D}${systemd_system_unitdir}
	install -m 0644 ${S}/systemd/lmp-device-register.service ${D}${systemd_system_unitdir}/
	if [ "${LMP_DEVICE_REGISTER_USE_HOSTNAME}" = "1" ]; then
		install -d ${D}${systemd_system_unitdir}/lmp-device-register.service.d
		printf '[Service]\nEnvironment=USE_HOSTNAME=1\n' \
			> ${D}${systemd_system_unitdir}/lmp-device-register.service.d/10-use-hostname.conf
		chmod 0644 ${D}${systemd_system_unitdir}/lmp-device-register.service.d/10-use-hostname.conf
	fi

	install -d ${D}${mandir}/man8
	install -m 0644 ${S}/docs/lmp-device-register.8 ${D}${mandir}/man8/

	install -d ${D}${datadir}/bash-completion/completions
	install -m 0644 ${S}/docs/completions/lmp-device-register.bash \
		${D}${datadir}/bash-completion/completions/lmp-device-register
	install -d ${D}${datadir}/zsh/site-functions
	install -m 0644 ${S}/docs/completions/_lmp-device-register ${D}${datadir}/zsh/site-functions/
	install -d ${D}${datadir}/fish/vendor_completions.d
	install -m 0644 ${S}/docs/completions/lmp-device-register.fish ${D}${datadir}/fish/vendor_completions.d/
}

SYSTEMD_SERVICE:${PN} = "lmp-device-register.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"
FILES:${PN} += "${systemd_system_unitdir}/lmp-device-register.service.d"

# Completions in packages of their own (an image with the bash-completion-pkgs
# feature picks up the bash one). Not "inherit bash-completion": that class
# also adds bash-completion to DEPENDS, which this build does not need.
PACKAGES =+ "${PN}-bash-completion ${PN}-zsh-completion ${PN}-fish-completion"
FILES:${PN}-bash-completion = "${datadir}/bash-completion"
FILES:${PN}-zsh-completion = "${datadir}/zsh/site-functions"
FILES:${PN}-fish-completion = "${datadir}/fish/vendor_completions.d"
RDEPENDS:${PN}-bash-completion = "bash-completion"

# fioconfig does the first configuration check-in; aktualizr-lite is started
# afterwards. SOTA_CLIENT is set by the LmP distro configuration.
SOTA_CLIENT ??= "aktualizr-lite"
RDEPENDS:${PN} += "${SOTA_CLIENT}"
RRECOMMENDS:${PN} += "fioconfig"

# One package replaces both the C++ tool and the auto-register script and
# unit (the unit keeps lmp-device-auto-register.service as an alias).
RPROVIDES:${PN} += "lmp-device-register lmp-device-auto-register"
RREPLACES:${PN} += "lmp-device-register lmp-device-auto-register"
RCONFLICTS:${PN} += "lmp-device-register lmp-device-auto-register"
