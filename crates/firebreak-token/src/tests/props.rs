//! SECURITY-TESTS.md Z1 as a property test in the default run: arbitrary input never panics the
//! parser, and any single-byte change to a valid token is refused.

use proptest::prelude::*;

use super::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Z1: arbitrary bytes (as lossy UTF-8) and arbitrary token-alphabet strings never panic.
    #[test]
    fn z1_jwt_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048),
                                 s in "[A-Za-z0-9_.=+/{} -]{0,400}") {
        let limits = Limits::default();
        let _ = UnverifiedJwt::parse(&String::from_utf8_lossy(&bytes), &limits);
        let _ = UnverifiedJwt::parse(&s, &limits);
    }

    /// Z1: a single-byte mutation anywhere in a valid EdDSA or ES256 token is refused by
    /// parse + verify + validate.
    #[test]
    fn z1_single_byte_mutation_refused(pos in any::<prop::sample::Index>(), byte in any::<u8>(), es in any::<bool>()) {
        let key = if es { es_key_cached() } else { ed_key_cached() };
        let token = at(key, &claims());
        let mut bytes = token.clone().into_bytes();
        let i = pos.index(bytes.len());
        prop_assume!(bytes[i] != byte);
        bytes[i] = byte;
        let mutated = String::from_utf8_lossy(&bytes).into_owned();
        prop_assert!(check(&mutated, &key.public_key()).is_err(), "accepted mutation at {i}");
        prop_assert!(check(&token, &key.public_key()).is_ok());
    }
}

fn ed_key_cached() -> &'static SigningKey {
    static KEY: std::sync::OnceLock<SigningKey> = std::sync::OnceLock::new();
    KEY.get_or_init(ed_key)
}

fn es_key_cached() -> &'static SigningKey {
    static KEY: std::sync::OnceLock<SigningKey> = std::sync::OnceLock::new();
    KEY.get_or_init(es_key)
}
