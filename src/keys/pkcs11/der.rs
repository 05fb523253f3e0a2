//! Encodings at the PKCS#11 boundary: CKA_ID strings, the P-256 curve
//! parameters, EC points and ECDSA signatures, RSA public keys and the
//! DigestInfo that CKM_RSA_PKCS signs.

/// The CKA_ID bytes for an id string of a configuration file, parsed as
/// fioconfig parses them.
///
/// Readers of `[p11]` turn these strings into CKA_ID bytes in two ways that
/// agree for single digits: fioconfig's `idToBytes` takes each character minus
/// `'0'` and strips leading zero bytes ("01" -> [0x01]); aktualizr builds a
/// PKCS#11 URI `id=%01`, i.e. hex ("01" -> [0x01]). They would disagree for an
/// id such as "10", which is why only single-digit ids are used (rotation by
/// fioconfig uses "07" and "09").
pub fn cka_id(id: &str) -> Vec<u8> {
    let digits: Vec<u8> = id.bytes().map(|c| c.wrapping_sub(b'0')).collect();
    let first = digits.iter().position(|&d| d != 0).unwrap_or(digits.len());
    digits[first..].to_vec()
}

/// DER of the named curve P-256 (prime256v1), for CKA_EC_PARAMS.
pub fn p256_params() -> Vec<u8> {
    yasna::construct_der(|w| {
        w.write_oid(&yasna::models::ObjectIdentifier::from_slice(&[
            1, 2, 840, 10045, 3, 1, 7,
        ]))
    })
}

/// CKM_ECDSA returns r||s; X.509 and TLS want DER ECDSA-Sig-Value.
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) {
        return None;
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    Some(integer_pair(r, s))
}

/// The uncompressed point from CKA_EC_POINT. PKCS#11 says it is a DER OCTET
/// STRING around the point; some modules return the bare point.
pub fn ec_point(value: &[u8]) -> Option<Vec<u8>> {
    let point = match yasna::parse_der(value, |r| r.read_bytes()) {
        Ok(inner) => inner,
        Err(_) => value.to_vec(),
    };
    (point.len() == 65 && point[0] == 0x04).then_some(point)
}

/// PKCS#1 RSAPublicKey from CKA_MODULUS and CKA_PUBLIC_EXPONENT (unsigned
/// big-endian), the form rcgen and ring take RSA public keys in.
pub fn rsa_public_key(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
    integer_pair(modulus, exponent)
}

/// SEQUENCE { INTEGER, INTEGER } of two unsigned big-endian numbers: the
/// shape of both an ECDSA-Sig-Value and an RSAPublicKey.
fn integer_pair(first: &[u8], second: &[u8]) -> Vec<u8> {
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_bigint_bytes(first, true);
            w.next().write_bigint_bytes(second, true);
        })
    })
}

/// DER DigestInfo of a SHA-256 digest (RFC 8017, 9.2): what CKM_RSA_PKCS
/// pads and signs for an RSASSA-PKCS1-v1_5 SHA-256 signature.
pub fn sha256_digest_info(digest: &[u8]) -> Vec<u8> {
    const SHA256_PREFIX: [u8; 19] = [
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];
    let mut info = SHA256_PREFIX.to_vec();
    info.extend_from_slice(digest);
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_parsed_like_fioconfig_does() {
        assert_eq!(cka_id("01"), [0x01]);
        assert_eq!(cka_id("03"), [0x03]);
        assert_eq!(cka_id("07"), [0x07]);
        assert_eq!(cka_id("0"), Vec::<u8>::new());
    }

    #[test]
    fn raw_signature_becomes_der() {
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80; // r needs a leading zero byte in DER
        raw[63] = 0x01; // s is 1
        let der = ecdsa_raw_to_der(&raw).unwrap();
        let (r, s) = yasna::parse_der(&der, |reader| {
            reader.read_sequence(|seq| {
                let r = seq.next().read_bigint_bytes()?;
                let s = seq.next().read_bigint_bytes()?;
                Ok((r, s))
            })
        })
        .unwrap();
        // Two's complement: a leading zero keeps r positive.
        let mut expected_r = vec![0];
        expected_r.extend(&raw[..32]);
        assert_eq!(r, (expected_r, true));
        assert_eq!(s, (vec![1], true));
        assert_eq!(&der[2..5], &[0x02, 33, 0x00]);
        assert!(ecdsa_raw_to_der(&[1, 2, 3]).is_none());
    }

    #[test]
    fn ec_point_is_unwrapped() {
        let mut point = vec![0x04];
        point.extend([7u8; 64]);
        let wrapped = yasna::construct_der(|w| w.write_bytes(&point));
        assert_eq!(ec_point(&wrapped), Some(point.clone()));
        assert_eq!(ec_point(&point), Some(point));
        assert_eq!(ec_point(&[0x04, 1, 2]), None);
    }

    #[test]
    fn p256_params_are_the_named_curve_oid() {
        assert_eq!(
            p256_params(),
            [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]
        );
    }

    #[test]
    fn digest_info_is_the_der_of_rfc_8017() {
        let digest = [7u8; 32];
        let info = sha256_digest_info(&digest);
        // DigestInfo ::= SEQUENCE { AlgorithmIdentifier { sha256, NULL }, OCTET STRING }
        let (oid, hash) = yasna::parse_der(&info, |r| {
            r.read_sequence(|seq| {
                let oid = seq.next().read_sequence(|alg| {
                    let oid = alg.next().read_oid()?;
                    alg.next().read_null()?;
                    Ok(oid)
                })?;
                let hash = seq.next().read_bytes()?;
                Ok((oid, hash))
            })
        })
        .unwrap();
        assert_eq!(
            oid,
            yasna::models::ObjectIdentifier::from_slice(&[2, 16, 840, 1, 101, 3, 4, 2, 1])
        );
        assert_eq!(hash, digest);
    }

    #[test]
    fn rsa_public_key_keeps_a_high_bit_modulus_positive() {
        let modulus = [0xc0u8; 256];
        let der = rsa_public_key(&modulus, &[1, 0, 1]);
        assert_eq!(crate::keys::rsa_modulus_bits(&der), Some(2048));
        let (m, e) = yasna::parse_der(&der, |r| {
            r.read_sequence(|seq| {
                let m = seq.next().read_bigint_bytes()?;
                let e = seq.next().read_u32()?;
                Ok((m, e))
            })
        })
        .unwrap();
        // Two's complement: a leading zero keeps the modulus positive.
        let mut expected = vec![0];
        expected.extend(modulus);
        assert_eq!(m, (expected, true));
        assert_eq!(e, 65537);
    }
}
