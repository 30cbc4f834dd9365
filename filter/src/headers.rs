//! Reads a whole header map from Envoy in one host call, as raw bytes.
//!
//! The SDK's `get_map` builds two `String`s per entry and panics on a value that is not UTF-8,
//! which HTTP/1 allows (obs-text): one such request would trap the VM and stop the workload's
//! traffic. Here the map stays one buffer, entries are borrowed slices, and the core decides
//! what to do with odd bytes.

use portcullis_core::request::RequestBuilder;
use proxy_wasm::types::MapType;
use std::ops::Range;

/// The serialized map the host wrote into VM memory, or `None` when it could not be read.
pub fn read(map: MapType) -> Option<Vec<u8>> {
    abi::header_map_pairs(map)
}

/// Entries of a serialized map: a u32 count, then (name length, value length) u32 pairs, then
/// every name and value, each followed by a NUL. Stops at the first inconsistency instead of
/// trusting lengths that point outside the buffer.
pub fn entries(buf: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut data = framing_len(buf);
    (0..count(buf)).map_while(move |i| {
        let (name, value) = entry_ranges(buf, i, data)?;
        data = value.end.checked_add(1)?;
        Some((buf.get(name)?, buf.get(value)?))
    })
}

/// The request in a serialized map, read in place: the buffer becomes the request's text.
pub fn request(raw: Vec<u8>) -> RequestBuilder {
    // The announced count sizes an allocation: never more entries than the buffer can hold (a
    // count of u32::MAX asked for 64 GiB and aborted the VM; found by fuzz/header_map).
    let n = count(&raw).min(raw.len() / MIN_ENTRY_BYTES);
    let framing = framing_len(&raw).min(raw.len());
    let mut b = RequestBuilder::over(raw, n);
    let mut data = framing;
    for i in 0..n {
        let Some((name, value)) = entry_ranges(b.bytes(), i, data) else {
            break;
        };
        data = value.end.saturating_add(1);
        b.entry_at(name, value);
    }
    b.blank(0..framing);
    b
}

/// The fewest bytes one entry takes: two u32 lengths and two NULs.
const MIN_ENTRY_BYTES: usize = 10;

/// Number of entries the buffer announces.
pub fn count(buf: &[u8]) -> usize {
    u32_at(buf, 0).unwrap_or(0)
}

/// Bytes before the first name: the count and the length pairs.
fn framing_len(buf: &[u8]) -> usize {
    count(buf).saturating_mul(8).saturating_add(4)
}

/// Ranges of entry `i`'s name and value, given where its name starts; `None` when the lengths
/// point outside the buffer.
fn entry_ranges(buf: &[u8], i: usize, start: usize) -> Option<(Range<usize>, Range<usize>)> {
    let sizes = i.checked_mul(8)?.checked_add(4)?;
    let name_len = u32_at(buf, sizes)?;
    let value_len = u32_at(buf, sizes.checked_add(4)?)?;
    let name_end = start.checked_add(name_len)?;
    let value_start = name_end.checked_add(1)?;
    let value_end = value_start.checked_add(value_len)?;
    (value_end <= buf.len()).then_some((start..name_end, value_start..value_end))
}

fn u32_at(buf: &[u8], at: usize) -> Option<usize> {
    let bytes: [u8; 4] = buf.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(bytes)).ok()
}

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod abi {
    use proxy_wasm::types::{MapType, Status};

    #[link(wasm_import_module = "env")]
    unsafe extern "C" {
        fn proxy_get_header_map_pairs(
            map_type: MapType,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> Status;
    }

    pub fn header_map_pairs(map: MapType) -> Option<Vec<u8>> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: the host writes a pointer to `size` bytes it obtained from the SDK's
        // `proxy_on_memory_allocate` (a leaked boxed slice of exactly that length), and hands
        // over its ownership; this is how the SDK's own `get_map` takes it back.
        unsafe {
            match proxy_get_header_map_pairs(map, &mut data, &mut size) {
                Status::Ok if !data.is_null() => Some(Vec::from_raw_parts(data, size, size)),
                _ => None,
            }
        }
    }
}

/// Outside a proxy (native unit tests) there is no map to read.
#[cfg(not(target_arch = "wasm32"))]
mod abi {
    use proxy_wasm::types::MapType;

    pub fn header_map_pairs(_map: MapType) -> Option<Vec<u8>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serialize(entries: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = (entries.len() as u32).to_le_bytes().to_vec();
        for (k, v) in entries {
            out.extend((k.len() as u32).to_le_bytes());
            out.extend((v.len() as u32).to_le_bytes());
        }
        for (k, v) in entries {
            out.extend(*k);
            out.push(0);
            out.extend(*v);
            out.push(0);
        }
        out
    }

    #[test]
    fn reads_what_the_host_serializes() {
        let map: &[(&[u8], &[u8])] = &[
            (b":path", b"/a"),
            (b"x-empty", b""),
            (b"x-latin1", b"caf\xe9"),
        ];
        let buf = serialize(map);
        assert_eq!(count(&buf), 3);
        assert_eq!(entries(&buf).collect::<Vec<_>>(), map);
    }

    #[test]
    fn a_request_is_read_in_place() {
        let raw = serialize(&[
            (b":method", b"GET"),
            (b":path", b"/a?b"),
            (b"authorization", b"Bearer t"),
            (b"x-latin1", b"caf\xe9"),
        ]);
        let r = request(raw).build();
        assert_eq!((r.method(), r.path(), r.scheme()), ("GET", "/a?b", "http"));
        assert_eq!(r.header("authorization"), Some("Bearer t"));
        assert_eq!(r.header("x-latin1"), Some("caf\u{fffd}"));
        // a truncated buffer yields the entries that fit, never a panic
        let mut raw = serialize(&[(b":method", b"GET"), (b":path", b"/long/path")]);
        raw.truncate(raw.len() - 4);
        let r = request(raw).build();
        assert_eq!((r.method(), r.path()), ("GET", ""));
    }

    #[test]
    fn lengths_pointing_outside_the_buffer_end_the_entries() {
        let mut buf = serialize(&[(b"a", b"1"), (b"b", b"2")]);
        // Second entry's value length is now far beyond the buffer.
        buf[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(entries(&buf).collect::<Vec<_>>(), [(&b"a"[..], &b"1"[..])]);
        // A count larger than the buffer, and garbage, yield nothing rather than panicking.
        assert_eq!(entries(&u32::MAX.to_le_bytes()).count(), 0);
        assert_eq!(entries(&[1, 2]).count(), 0);
        assert_eq!(entries(&[]).count(), 0);
    }

    #[test]
    fn a_huge_announced_count_allocates_nothing_for_it() {
        // Used to reserve u32::MAX entries (64 GiB) and abort.
        for count in [u32::MAX, 1 << 28] {
            let mut raw = count.to_le_bytes().to_vec();
            raw.extend_from_slice(&[0; 32]);
            let r = request(raw).build();
            assert_eq!((r.method(), r.path()), ("", ""));
            assert_eq!(r.headers().count(), 0);
        }
    }
}
