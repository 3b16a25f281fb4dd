//! HdrHistogram's V2 encoding, uncompressed, as every HdrHistogram
//! implementation reads it: a 40-byte big-endian header (cookie, payload
//! length, normalizing offset, significant figures, lowest and highest
//! trackable values, integer-to-double ratio), then each bucket's count as
//! a ZigZag LEB128 varint, a run of empty buckets as one negative number.
//!
//! Written here rather than by the `hdrhistogram` crate's own serializer:
//! its `serialization` feature also brings flate2, nom and an older
//! base64, for the deflate variant and a log format load mode does not
//! use. The format is small and fixed; the tests check it against
//! figures the crate computes.

use hdrhistogram::Histogram;
use thiserror::Error;

/// V2 without deflate: `0x1c849303 | 0x10`.
const COOKIE: u32 = 0x1c84_9313;
const HEADER: usize = 40;

#[derive(Debug, Error, PartialEq)]
pub enum DecodeError {
    #[error("it is not an uncompressed HdrHistogram V2 encoding")]
    Cookie,
    #[error("it ends before its {0} does")]
    Truncated(&'static str),
    #[error("its bounds ({low}..{high}, {sigfig} significant figures) make no histogram")]
    Bounds { low: u64, high: u64, sigfig: u32 },
    #[error("it counts past its bounds' last bucket")]
    TooManyBuckets,
}

pub(crate) fn encode(histogram: &Histogram<u64>) -> Vec<u8> {
    let mut payload = Vec::new();
    let mut zeros: i64 = 0;
    for bucket in histogram.iter_all() {
        let count = bucket.count_at_value();
        if count == 0 {
            zeros += 1;
            continue;
        }
        push_zeros(&mut payload, zeros);
        zeros = 0;
        // Counts past i64::MAX cannot be written; no run reaches them.
        push_varint(&mut payload, zigzag(count.min(i64::MAX as u64) as i64));
    }
    // Trailing empty buckets are left out, as the reference encoder does.
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&COOKIE.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&u32::from(histogram.sigfig()).to_be_bytes());
    out.extend_from_slice(&histogram.low().to_be_bytes());
    out.extend_from_slice(&histogram.high().to_be_bytes());
    out.extend_from_slice(&1.0f64.to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

fn push_zeros(out: &mut Vec<u8>, zeros: i64) {
    match zeros {
        0 => {}
        // A single empty bucket is a count of 0; longer runs, negative.
        1 => push_varint(out, 0),
        n => push_varint(out, zigzag(-n)),
    }
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Histogram<u64>, DecodeError> {
    let header = bytes
        .get(..HEADER)
        .ok_or(DecodeError::Truncated("header"))?;
    let u32_at = |at: usize| u32::from_be_bytes(header[at..at + 4].try_into().unwrap_or([0; 4]));
    let u64_at = |at: usize| u64::from_be_bytes(header[at..at + 8].try_into().unwrap_or([0; 8]));
    if u32_at(0) != COOKIE {
        return Err(DecodeError::Cookie);
    }
    let length = u32_at(4) as usize;
    let (sigfig, low, high) = (u32_at(12), u64_at(16), u64_at(24));
    let payload = bytes
        .get(HEADER..HEADER.saturating_add(length))
        .ok_or(DecodeError::Truncated("counts"))?;
    let bad_bounds = DecodeError::Bounds { low, high, sigfig };
    let sigfig_u8 = u8::try_from(sigfig).map_err(|_| DecodeError::Bounds { low, high, sigfig })?;
    let mut histogram =
        Histogram::<u64>::new_with_bounds(low, high, sigfig_u8).map_err(|_| bad_bounds)?;
    // Each bucket's value, by index: what the counts are recorded at.
    let values: Vec<u64> = histogram
        .iter_all()
        .map(|bucket| bucket.value_iterated_to())
        .collect();
    let mut index = 0usize;
    let mut at = 0usize;
    while at < payload.len() {
        let number = unzigzag(read_varint(payload, &mut at)?);
        if number < 0 {
            index = index.saturating_add(number.unsigned_abs() as usize);
            continue;
        }
        if number > 0 {
            let value = *values.get(index).ok_or(DecodeError::TooManyBuckets)?;
            histogram
                .record_n(value, number as u64)
                .map_err(|_| DecodeError::TooManyBuckets)?;
        }
        index += 1;
    }
    Ok(histogram)
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

/// LEB128-64b9B: seven bits a byte for eight bytes, then the last eight
/// bits whole, so a u64 takes at most nine bytes.
fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    for _ in 0..8 {
        if value < 0x80 {
            out.push(value as u8);
            return;
        }
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn read_varint(bytes: &[u8], at: &mut usize) -> Result<u64, DecodeError> {
    let mut value = 0u64;
    for shift in 0..8 {
        let byte = *bytes.get(*at).ok_or(DecodeError::Truncated("counts"))?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << (7 * shift);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    let byte = *bytes.get(*at).ok_or(DecodeError::Truncated("counts"))?;
    *at += 1;
    Ok(value | (u64::from(byte) << 56))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(values: &[(u64, u64)]) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for (value, count) in values {
            h.record_n(*value, *count).unwrap();
        }
        h
    }

    #[test]
    fn a_histogram_comes_back_bucket_for_bucket() {
        let original = histogram(&[(1, 3), (2, 1), (917, 40), (73_200, 2), (3_599_999_999, 1)]);
        let decoded = decode(&encode(&original)).unwrap();
        assert_eq!(decoded, original);
        assert_eq!(decoded.len(), 47);
        assert_eq!(decoded.max(), original.max());
        assert_eq!(
            decoded.value_at_quantile(0.99),
            original.value_at_quantile(0.99)
        );
    }

    #[test]
    fn an_empty_histogram_is_a_header() {
        let empty = histogram(&[]);
        let bytes = encode(&empty);
        assert_eq!(bytes.len(), HEADER);
        assert_eq!(decode(&bytes).unwrap(), empty);
    }

    #[test]
    fn the_header_is_the_reference_one() {
        let bytes = encode(&histogram(&[(1, 1)]));
        // Cookie, then 2 bytes of counts: bucket 0 (the value 0) is
        // empty, bucket 1 counts 1, which zigzagged is 2.
        assert_eq!(&bytes[..8], &[0x1c, 0x84, 0x93, 0x13, 0, 0, 0, 2]);
        assert_eq!(&bytes[12..16], &[0, 0, 0, 3]);
        assert_eq!(bytes[HEADER..], [0, 2]);
    }

    #[test]
    fn varints_take_up_to_nine_bytes() {
        for value in [0, 1, 127, 128, 300, u64::MAX >> 1, u64::MAX] {
            let mut out = Vec::new();
            push_varint(&mut out, value);
            assert!(out.len() <= 9);
            let mut at = 0;
            assert_eq!(read_varint(&out, &mut at), Ok(value));
            assert_eq!(at, out.len());
        }
        for n in [0, 1, -1, 5_000, -5_000, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag(zigzag(n)), n);
        }
    }

    #[test]
    fn damaged_input_is_an_error() {
        let bytes = encode(&histogram(&[(5, 1), (900_000, 7)]));
        assert_eq!(decode(&bytes[..20]), Err(DecodeError::Truncated("header")));
        assert_eq!(
            decode(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Truncated("counts"))
        );
        let mut wrong = bytes.clone();
        wrong[0] = 0;
        assert_eq!(decode(&wrong), Err(DecodeError::Cookie));
        // A run of empty buckets past the end, then a count.
        let mut far = bytes[..HEADER].to_vec();
        let mut counts = Vec::new();
        push_varint(&mut counts, zigzag(-10_000_000));
        push_varint(&mut counts, zigzag(1));
        far[4..8].copy_from_slice(&(counts.len() as u32).to_be_bytes());
        far.extend_from_slice(&counts);
        assert_eq!(decode(&far), Err(DecodeError::TooManyBuckets));
    }
}
