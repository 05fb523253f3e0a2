# nooelint: oelint.var.mandatoryvar.HOMEPAGE,oelint.var.suggestedvar.BUGTRACKER,oelint.var.suggestedvar.CVE_PRODUCT,oelint.var.bbclassextend
# A factory-private recipe: no home page, bug tracker or CVE product to name,
# and device files have no use in a native build.
SUMMARY = "Registration settings of this factory's devices"
DESCRIPTION = "API token, tag and HSM settings read by lmp-device-register --boot on first boot."
SECTION = "admin"
# Factory-private content.
LICENSE = "CLOSED"

SRC_URI = "file://api-token \
           file://tag \
           file://hsm \
           "
S = "${UNPACKDIR}"

# Not allarch: the files belong to one machine (the HSM module path is the
# SE050's) and the package depends on lmp-device-register-rs, which is
# machine-specific; an allarch recipe with such a dependency would be rebuilt
# for every machine anyway.
PACKAGE_ARCH = "${MACHINE_ARCH}"

do_install() {
    install -d ${D}${sysconfdir}/sota
    # Secrets: root only (the agent warns about a token file that group or
    # others can read).
    install -m 0600 ${UNPACKDIR}/api-token ${D}${sysconfdir}/lmp-device-register-token
    install -m 0600 ${UNPACKDIR}/hsm ${D}${sysconfdir}/sota/hsm
    install -m 0644 ${UNPACKDIR}/tag ${D}${sysconfdir}/sota/tag
}

# The package's default FILES takes everything under ${sysconfdir}; these are
# also the device's own settings, which an upgrade must not overwrite.
CONFFILES:${PN} = "${sysconfdir}/lmp-device-register-token \
                   ${sysconfdir}/sota/hsm \
                   ${sysconfdir}/sota/tag \
                   "

# The SE050 is reached through OP-TEE's PKCS#11 library (libckteec.so.0).
RDEPENDS:${PN} = "lmp-device-register-rs optee-client"
