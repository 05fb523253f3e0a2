//! Encodings at the PKCS#11 boundary: CKA_ID strings, the P-256 curve
//! parameters, EC points and ECDSA signatures.

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
    Some(yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_bigint_bytes(r, true);
            w.next().write_bigint_bytes(s, true);
        })
    }))
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
}
