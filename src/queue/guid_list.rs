//! A batch's GUIDs as a JSON array, written straight into a buffer.
//!
//! Every accepted batch sends its GUIDs twice — in the message to the
//! worker and in the 202 answer — a thousand of them for a full batch of
//! pieces. Through serde each is formatted into a string and then scanned
//! byte by byte for characters to escape, which a hyphenated UUID never
//! has, a large share of the api's work per request. Here each is
//! formatted once, in place.

use uuid::Uuid;

/// Bytes of one GUID in the array: quotes, 36 characters, comma.
const BYTES_PER_GUID: usize = 39;

/// Appends `guids` to `out` as a JSON array of lower-case hyphenated
/// strings — the same text `serde_json` writes for a `&[Uuid]`.
pub fn write_json(out: &mut Vec<u8>, guids: &[Uuid]) {
    out.reserve(2 + BYTES_PER_GUID * guids.len());
    out.push(b'[');
    for (i, guid) in guids.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        out.extend_from_slice(guid.hyphenated().encode_lower(&mut text).as_bytes());
        out.push(b'"');
    }
    out.push(b']');
}

/// Adds `"guids": [...]` as the last field of the JSON object `out` ends
/// with (which has a field already): the object is reopened, not rebuilt.
pub fn add_to_object(out: &mut Vec<u8>, guids: &[Uuid]) {
    debug_assert_eq!(out.last(), Some(&b'}'));
    out.pop();
    out.extend_from_slice(br#","guids":"#);
    write_json(out, guids);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_what_serde_json_writes() {
        for count in [0, 1, 2, 1000] {
            let guids: Vec<Uuid> = (0..count)
                .map(|i| {
                    if i % 2 == 0 {
                        Uuid::now_v7()
                    } else {
                        Uuid::new_v4()
                    }
                })
                .chain(std::iter::once(Uuid::max()).filter(|_| count > 0))
                .collect();
            let mut written = b"prefix:".to_vec();
            write_json(&mut written, &guids);
            let expected = [
                b"prefix:".as_slice(),
                &serde_json::to_vec(&guids).expect("json"),
            ]
            .concat();
            assert_eq!(
                String::from_utf8(written).expect("utf-8"),
                String::from_utf8(expected).expect("utf-8")
            );
        }
    }

    #[test]
    fn guids_become_the_last_field_of_an_object() {
        let guids = [Uuid::now_v7(), Uuid::new_v4()];
        let mut object = br#"{"id":7}"#.to_vec();
        add_to_object(&mut object, &guids);
        let read: serde_json::Value = serde_json::from_slice(&object).expect("valid JSON");
        assert_eq!(read, serde_json::json!({"id": 7, "guids": guids}));
    }
}
