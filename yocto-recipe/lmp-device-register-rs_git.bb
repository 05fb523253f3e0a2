# nooelint: oelint.var.mandatoryvar.HOMEPAGE,oelint.var.suggestedvar.BUGTRACKER,oelint.var.suggestedvar.CVE_PRODUCT,oelint.var.bbclassextend
# oelint-adv findings left on purpose (yocto-recipe/README.md, "Lint"):
# HOMEPAGE, BUGTRACKER: this project has no settled public URL yet (see
# LMP_DEVICE_REGISTER_RS_GIT below); CVE_PRODUCT: no CVE database names it,
# and the crates it links are checked against the RustSec advisories by
# "cargo deny"; BBCLASSEXTEND: an agent that registers the device it runs
# on has no use as a native or nativesdk tool.
SUMMARY = "Registers a Linux microPlatform device with its factory (Rust)"
DESCRIPTION = "One binary that replaces the C++ lmp-device-register and the \
               lmp-device-auto-register script: EC P-256 key (software or PKCS#11), CSR, \
               certificates and sota.toml, plus a first-boot systemd unit."
SECTION = "admin"

# What the binary is made of: this project (BSD-3-Clause, first) and every
# crate it links statically, with the license expressions their Cargo.toml
# declare ("A | B": the crate offers either). Build scripts, proc-macros and
# dev-dependencies run on the build host only and are not listed.
# tests/yocto.rs derives the set from "cargo metadata" for the Linux
# targets and fails, printing the line to use, when this one differs.
LICENSE = "BSD-3-Clause & Apache-2.0 & ISC & MIT & Unicode-3.0 & \
           (Apache-2.0 | BSL-1.0) & (Apache-2.0 | MIT) & (MIT | Unlicense) & \
           (Apache-2.0 | ISC | MIT) & (Apache-2.0 | MIT | Zlib)"
# The crates' own license files sit in the vendor directory under versioned
# names that change with every Cargo.lock update; OE checks the project's
# file here and takes the crates' texts from its common-licenses.
LIC_FILES_CHKSUM = "file://LICENSE;md5=6afcde2869e0bc53d6d57e2f970d28ec"

# Named -rs so that it can sit beside meta-lmp's C++ lmp-device-register_git.bb
# in the same layer stack; the package replaces that one at run time (see
# RPROVIDES/RCONFLICTS below). Pick it for an image with
#   PREFERRED_RPROVIDER_lmp-device-register = "lmp-device-register-rs"
#
# Rust: Cargo.toml's rust-version is 1.89 (uuid 1.29 in Cargo.lock needs it).
# Yocto releases and the Rust their oe-core ships (rust_*.bb of each branch):
#   scarthgap (5.0 LTS)  1.75    too old: needs a newer Rust layer
#   styhead   (5.1)      1.79    too old
#   walnascar (5.2)      1.84.1  too old
#   whinlatter (5.3)     1.90.0  builds
#   wrynose   (6.0 LTS)  1.94.1  builds; meta-lmp main is on wrynose
PV = "0.1.0+git"

# This project's git repository, as a BitBake git URL without a branch, e.g.
#   LMP_DEVICE_REGISTER_RS_GIT = "git://git.example.com/lmp-device-register-rs.git;protocol=https"
# Set it where the recipe is carried (the layer's bbappend, distro or
# local.conf). It has no default: parsing stops with a message saying what to
# set until it is set (see the check below).
LMP_DEVICE_REGISTER_RS_GIT ??= ""
LMP_DEVICE_REGISTER_RS_BRANCH ??= "main"
SRC_URI = "${LMP_DEVICE_REGISTER_RS_GIT};branch=${LMP_DEVICE_REGISTER_RS_BRANCH}"
# The commit to build. The crates .inc next to this recipe is generated from
# the Cargo.lock of the tree it was copied from, and the tree must read what
# the recipe exports (DOCKER_COMPOSE_APP, the cargo features): a layer that
# bumps SRCREV copies the recipe and the .inc from that same commit.
SRCREV = "ffa53f6e1bf36b0b3ff29e1338b219f1ff01d75c"
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

# The stand-alone release build strips the binary; here OE strips it (and
# keeps the debug symbols in -dbg), which the already-stripped QA check insists on.
export CARGO_PROFILE_RELEASE_STRIP = "false"

# Registration profiles. LmP is always built; each other profile is the cargo
# feature of the same name. The default is the stand-alone build's (every
# profile); an image that needs only LmP builds only LmP with
#   PACKAGECONFIG:remove:pn-lmp-device-register-rs = "losant tii azure-dps"
# oe-core's cargo class passes ${PACKAGECONFIG_CONFARGS} to "cargo build".
CARGO_BUILD_FLAGS += "--no-default-features"
PACKAGECONFIG ??= "composeapp losant tii azure-dps"
PACKAGECONFIG[losant] = "--features losant,,"
PACKAGECONFIG[tii] = "--features tii,,"
PACKAGECONFIG[azure-dps] = "--features azure-dps,,"
# RSA keys in software; tii turns it on by itself.
PACKAGECONFIG[software-rsa] = "--features software-rsa,,"
# The device key signs TLS handshakes; tii and azure-dps turn it on by themselves.
PACKAGECONFIG[mutual-tls] = "--features mutual-tls,,"
# A first stage stored before the second; azure-dps turns it on by itself.
PACKAGECONFIG[two-stage] = "--features two-stage,,"

# Build-time defaults, read with option_env! by the agent. Names of the
# C++ recipe's variables, so existing factory bbappends keep working.
# (src/clock.rs also reads SOURCE_DATE_EPOCH, which OE exports to every task:
# a clock earlier than the build is treated as not yet set.)
LMP_DEVICE_API ?= "https://api.foundries.io/ota/devices/"
LMP_OAUTH_API ?= "https://app.foundries.io/oauth"
export HARDWARE_ID = "${MACHINE}"
export DEVICE_API = "${LMP_DEVICE_API}"
export OAUTH_BASE = "${LMP_OAUTH_API}"
# "production": every device registered by this image is a production device
# (businessCategory=production in the CSR) unless -p or the PRODUCTION
# environment variable says otherwise on the device.
PACKAGECONFIG[production] = ",,"
export PRODUCTION = "${@bb.utils.contains('PACKAGECONFIG', 'production', '1', '0', d)}"
# "composeapp" (meta-lmp's default, as here): the image runs compose apps, so
# the agent configures the apps preloaded in /var/sota/compose-apps (and
# restorable apps when /var/sota/reset-apps exists). Without it the agent
# sends no compose-app settings unless -a/APPS or -A ask for them, as the
# C++ tool built without DOCKER_COMPOSE_APP did.
PACKAGECONFIG[composeapp] = ",,"
export DOCKER_COMPOSE_APP = "${@bb.utils.contains('PACKAGECONFIG', 'composeapp', '1', '0', d)}"

# The binary carries MACHINE as its default hardware id, so the package differs
# between machines of one tune.
PACKAGE_ARCH = "${MACHINE_ARCH}"

# "1" (or yes/true): the unit registers the device with its /etc/hostname as
# its name. LMP_AUTO_REGISTER_USE_HOSTNAME is the name meta-lmp's
# lmp-device-auto-register recipe used; it still works.
LMP_AUTO_REGISTER_USE_HOSTNAME ??= ""
LMP_DEVICE_REGISTER_USE_HOSTNAME ??= "${LMP_AUTO_REGISTER_USE_HOSTNAME}"

# Runs when the recipe is parsed, before any class reads SRC_URI. A missing
# repository or a value the recipe does not understand stops the parse with
# a message saying what to set. Not a SkipRecipe: with meta-lmp in the layer
# stack, BitBake would then quietly build the C++ lmp-device-register for
# images that ask for it, PREFERRED_RPROVIDER notwithstanding.
python lmp_device_register_rs_check_settings() {
    repository = d.getVar("LMP_DEVICE_REGISTER_RS_GIT")
    if not repository:
        bb.fatal(
            "LMP_DEVICE_REGISTER_RS_GIT is not set: set it to the git URL of the "
            "Rust lmp-device-register, e.g. LMP_DEVICE_REGISTER_RS_GIT = "
            "\"git://git.example.com/lmp-device-register-rs.git;protocol=https\" "
            "(SRCREV pins the commit, LMP_DEVICE_REGISTER_RS_BRANCH names its branch)")
    if not repository.startswith("git://") or ";branch=" in repository:
        bb.fatal(
            "LMP_DEVICE_REGISTER_RS_GIT = \"%s\": expected a git:// URL without "
            ";branch= (LMP_DEVICE_REGISTER_RS_BRANCH names the branch)" % repository)
    # The old name first: a value set there shows up under the new one too.
    for var in ("LMP_AUTO_REGISTER_USE_HOSTNAME", "LMP_DEVICE_REGISTER_USE_HOSTNAME"):
        try:
            bb.utils.to_boolean(d.getVar(var), False)
        except ValueError:
            bb.fatal("%s = \"%s\": expected 1/yes/true or 0/no/false" % (var, d.getVar(var)))
}
lmp_device_register_rs_check_settings[doc] = "Stops the parse when LMP_DEVICE_REGISTER_RS_GIT or a hostname setting is missing or malformed"
addhandler lmp_device_register_rs_check_settings
lmp_device_register_rs_check_settings[eventmask] = "bb.event.RecipePreFinalise"

do_install:append() {
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/systemd/lmp-device-register.service ${D}${systemd_system_unitdir}/
    # /var/sota, made at boot: the unit's sandbox keeps the agent from making it.
    install -d ${D}${nonarch_libdir}/tmpfiles.d
    install -m 0644 ${S}/systemd/lmp-device-register.tmpfiles \
        ${D}${nonarch_libdir}/tmpfiles.d/lmp-device-register.conf
    if [ "${@bb.utils.to_boolean(d.getVar('LMP_DEVICE_REGISTER_USE_HOSTNAME'), False)}" = "True" ]; then
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

# Completions in packages of their own (an image with the bash-completion-pkgs
# feature picks up the bash one). Not "inherit bash-completion": that class
# also adds bash-completion to DEPENDS, which this build does not need.
PACKAGES =+ "${PN}-bash-completion ${PN}-zsh-completion ${PN}-fish-completion"
FILES:${PN} += "${systemd_system_unitdir}/lmp-device-register.service.d \
                ${nonarch_libdir}/tmpfiles.d/lmp-device-register.conf"
FILES:${PN}-bash-completion += "${datadir}/bash-completion"
FILES:${PN}-zsh-completion += "${datadir}/zsh/site-functions"
FILES:${PN}-fish-completion += "${datadir}/fish/vendor_completions.d"
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
