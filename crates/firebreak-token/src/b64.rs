//! Canonical base64url (RFC 7515 §2): URL-safe alphabet, no padding, no whitespace, and zero
//! unused trailing bits, so two different strings never decode to the same bytes.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

// Spelled out rather than relying on `URL_SAFE_NO_PAD`'s defaults, so the strictness is visible
// here: padding is an error and non-zero trailing bits are an error.
const STRICT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(false),
);

/// Decodes canonical unpadded base64url; `None` on any deviation.
pub(crate) fn decode(s: &str) -> Option<Vec<u8>> {
    STRICT.decode(s.as_bytes()).ok()
}

/// Encodes as unpadded base64url.
pub(crate) fn encode(bytes: &[u8]) -> String {
    STRICT.encode(bytes)
}
