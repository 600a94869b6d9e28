//! Nix's base-32 encoding: its own alphabet and bit order, as used in store paths and hashes.

/// The 32 characters Nix uses (no e, o, u, t, to avoid accidental words).
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Length of the encoding of `len` bytes.
pub const fn encoded_len(len: usize) -> usize {
    if len == 0 { 0 } else { (len * 8 - 1) / 5 + 1 }
}

/// Encodes bytes the way Nix does (last 5-bit group first).
pub fn encode(input: &[u8]) -> String {
    let len = encoded_len(input.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let b = n * 5;
        let (i, j) = (b / 8, b % 8);
        let low = input[i] >> j;
        let high = if i + 1 < input.len() { input[i + 1].checked_shl(8 - j as u32).unwrap_or(0) } else { 0 };
        out.push(ALPHABET[((low | high) & 0x1f) as usize] as char);
    }
    out
}

/// Why a string is not Nix base-32 of the expected length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid nixbase32 character {0:?}")]
    InvalidChar(char),
    #[error("nixbase32 string has length {0}, expected {1}")]
    WrongLength(usize, usize),
    #[error("nixbase32 string has non-zero padding bits")]
    NonZeroPadding,
}

/// Decodes a Nix base-32 string that must encode exactly `out_len` bytes.
pub fn decode(input: &[u8], out_len: usize) -> Result<Vec<u8>, DecodeError> {
    if input.len() != encoded_len(out_len) {
        return Err(DecodeError::WrongLength(input.len(), encoded_len(out_len)));
    }
    let mut out = vec![0u8; out_len];
    for (n, &c) in input.iter().rev().enumerate() {
        let digit = ALPHABET.iter().position(|&a| a == c).ok_or(DecodeError::InvalidChar(c as char))? as u16;
        let b = n * 5;
        let (i, j) = (b / 8, b % 8);
        let shifted = digit << j;
        out[i] |= shifted as u8;
        let carry = (shifted >> 8) as u8;
        if i + 1 < out_len {
            out[i + 1] |= carry;
        } else if carry != 0 {
            return Err(DecodeError::NonZeroPadding);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_nix() {
        // sha256("") in Nix base-32, as `nix-hash --type sha256 --to-base32` prints it.
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let raw = data_encoding::HEXLOWER.decode(hex.as_bytes()).unwrap();
        assert_eq!(encode(&raw), "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73");
        assert_eq!(decode(encode(&raw).as_bytes(), 32).unwrap(), raw);
        assert_eq!(encode(&[0u8; 20]).len(), 32);
        assert!(decode(b"e", 1).is_err());
    }
}
