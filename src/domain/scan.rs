//! The fastest path for valid batches: one pass over the body's bytes
//! checks every rule of the schema and keeps only what the api needs to
//! queue the batch as sent — each item's GUID and company.
//!
//! Deserializing typed items, each with its own strings, only to drop them
//! once the message is built was most of the api's CPU time under load
//! (serde_json and the allocator). This scanner accepts a narrower JSON
//! than the parsers behind it — no escapes in keys, no `null` where the
//! typed items would not take one, UUIDs only in their hyphenated form,
//! measures not negative — and gives up on anything else, leaving it to the
//! typed path and the walk. So it never decides a refusal and never accepts
//! what they would not: its tests hold it to the walk's verdict and to the
//! worker's reading of the forwarded items. (Values with escapes, rare, are
//! handed to serde_json one by one.)

use super::attributes;
use super::fast::MAX_DEPTH;
use super::schema::{fields, Field, FieldKind};
use super::validate::{check_text, parse_date};
use super::{Batch, Entity};
use chrono::NaiveDate;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use uuid::Uuid;

/// What the api keeps of a valid batch whose items travel on as sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub entity: Entity,
    /// Every item's GUID, in order (given or assigned).
    pub guids: Vec<Uuid>,
    /// Every item's company, in order.
    pub companies: Vec<Uuid>,
}

impl Manifest {
    /// The manifest of a typed batch.
    pub fn of(batch: &Batch) -> Manifest {
        Manifest {
            entity: batch.entity(),
            guids: batch.guids(),
            companies: batch.companies(),
        }
    }

    pub fn len(&self) -> usize {
        self.guids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.guids.is_empty()
    }

    /// The company the batch's job belongs to: the items' own when they
    /// all name the same one, else (a SystemAdmin's mixed batch, or an
    /// empty one) the caller's.
    pub fn owner(&self, caller: Uuid) -> Uuid {
        match self.companies.first() {
            Some(first) if self.companies.iter().all(|c| c == first) => *first,
            _ => caller,
        }
    }
}

/// `Some` when `text` is a valid batch of at most `limit` `entity` items in
/// the JSON this scanner reads; `None` when the other paths must decide.
pub(super) fn scan(entity: Entity, text: &str, limit: usize) -> Option<Manifest> {
    let fields: Vec<Field> = fields(entity).copied().collect();
    // A bit per field marks it seen in the current item.
    if fields.len() > 32 {
        return None;
    }
    let mut cursor = Cursor { text, pos: 0 };
    let mut manifest = Manifest {
        entity,
        guids: Vec::new(),
        companies: Vec::new(),
    };
    // GUIDs the items give, to find one given twice.
    let mut given = Vec::new();
    cursor.expect(b'[')?;
    if !cursor.eat(b']') {
        loop {
            if manifest.guids.len() == limit {
                return None;
            }
            let item = cursor.item(&fields)?;
            let guid = match item.guid {
                Some(guid) => {
                    given.push(guid);
                    guid
                }
                None => Uuid::now_v7(),
            };
            manifest.guids.push(guid);
            manifest.companies.push(item.company?);
            if cursor.eat(b']') {
                break;
            }
            cursor.expect(b',')?;
            if manifest.guids.len() == 1 {
                // Most batches are full: size for the rest at once.
                let rest = text.len() / cursor.pos.max(1);
                manifest.guids.reserve(rest.min(limit));
                manifest.companies.reserve(rest.min(limit));
                given.reserve(rest.min(limit));
            }
        }
    }
    cursor.skip_whitespace();
    if cursor.pos != text.len() {
        return None;
    }
    // Sorting is cheaper than hashing every GUID.
    given.sort_unstable();
    if given.windows(2).any(|pair| pair[0] == pair[1]) {
        return None;
    }
    Some(manifest)
}

/// What one item contributes, besides its validity.
struct Item {
    guid: Option<Uuid>,
    company: Option<Uuid>,
}

/// A position in the body. Every method returns `None` on anything it does
/// not read, and the scan gives up.
struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }

    /// Skips whitespace, then consumes `byte` if it comes next.
    fn eat(&mut self, byte: u8) -> bool {
        self.skip_whitespace();
        let next = self.peek() == Some(byte);
        if next {
            self.pos += 1;
        }
        next
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.eat(byte).then_some(())
    }

    /// A string without escapes, after whitespace; its text. A `"` always
    /// sits on a character boundary, so slicing there is safe.
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.pos;
        let end = string_end(self.bytes(), start)?;
        // An escape, or a control character JSON does not allow raw.
        if self.bytes()[end] != b'"' {
            return None;
        }
        self.pos = end + 1;
        Some(&self.text[start..end])
    }

    /// A field value's string, after whitespace, escapes decoded. Text
    /// fields may well hold quotes or line breaks; the rare string with an
    /// escape is handed to serde_json, which checks every escape (a lone
    /// surrogate, say) as the typed items would.
    fn text_value(&mut self) -> Option<Cow<'a, str>> {
        self.skip_whitespace();
        let open = self.pos;
        if let Some(text) = self.string() {
            return Some(Cow::Borrowed(text));
        }
        // Where the string really ends: past every escape. A broken escape
        // is left for serde_json to refuse.
        self.pos = open;
        self.expect(b'"')?;
        let mut at = self.pos;
        let end = loop {
            let found = string_end(self.bytes(), at)?;
            match self.bytes()[found] {
                b'"' => break found,
                b'\\' => at = found + 2,
                _ => return None,
            }
        };
        let decoded: String = serde_json::from_str(self.text.get(open..=end)?).ok()?;
        self.pos = end + 1;
        Some(Cow::Owned(decoded))
    }

    /// An item's key, after whitespace: the index of its field in `fields`,
    /// trying `expected` first.
    fn key(&mut self, fields: &[Field], expected: usize) -> Option<usize> {
        self.skip_whitespace();
        if let Some(field) = fields.get(expected) {
            // `"name"` with the quotes: names hold no quote or escape.
            let rest = &self.bytes()[self.pos..];
            let name = field.name.as_bytes();
            let quoted = |at: usize| rest.get(at) == Some(&b'"');
            if quoted(0) && quoted(name.len() + 1) && same(&rest[1..=name.len()], name) {
                self.pos += name.len() + 2;
                return Some(expected);
            }
        }
        let name = self.string()?.as_bytes();
        fields.iter().position(|f| same(f.name.as_bytes(), name))
    }

    /// A UUID string in the hyphenated form, after whitespace: the one form
    /// every parser behind this one reads.
    fn uuid(&mut self) -> Option<Uuid> {
        self.expect(b'"')?;
        let text = self.bytes().get(self.pos..self.pos + 37)?;
        if text[36] != b'"' {
            return None;
        }
        // Hex digits and hyphens only, or it fails.
        let uuid = Uuid::try_parse_ascii(&text[..36]).ok()?;
        self.pos += 37;
        Some(uuid)
    }

    /// `null`, after whitespace, if it comes next.
    fn null(&mut self) -> bool {
        self.skip_whitespace();
        let next = self.bytes()[self.pos..].starts_with(b"null");
        if next {
            self.pos += 4;
        }
        next
    }

    /// A JSON number's text, after whitespace (RFC 8259's grammar; no sign:
    /// no field this path takes is negative).
    fn number(&mut self) -> Option<&'a str> {
        self.skip_whitespace();
        self.unsigned(self.pos)
    }

    /// The number whose digits start at `self.pos`, its text from `start`.
    fn unsigned(&mut self, start: usize) -> Option<&'a str> {
        let bytes = self.bytes();
        let digits = |mut at: usize| {
            while bytes.get(at).is_some_and(u8::is_ascii_digit) {
                at += 1;
            }
            at
        };
        let first = self.pos;
        let mut at = match bytes.get(first)? {
            b'0' => first + 1,
            b'1'..=b'9' => digits(first + 1),
            _ => return None,
        };
        if bytes.get(at) == Some(&b'.') {
            let fraction = digits(at + 1);
            if fraction == at + 1 {
                return None;
            }
            at = fraction;
        }
        if let Some(b'e' | b'E') = bytes.get(at) {
            at += 1;
            if let Some(b'+' | b'-') = bytes.get(at) {
                at += 1;
            }
            let exponent = digits(at);
            if exponent == at {
                return None;
            }
            at = exponent;
        }
        self.pos = at;
        Some(&self.text[start..at])
    }

    /// An object value that obeys the attribute rules (no NUL, nesting
    /// within [`MAX_DEPTH`]).
    fn attributes(&mut self) -> Option<()> {
        self.skip_whitespace();
        if self.peek() != Some(b'{') {
            return None;
        }
        let start = self.pos;
        if self.value(0).is_some() {
            // Read here: no escapes, so no NUL, and nesting counted.
            return Some(());
        }
        // Escapes (or deep nesting): serde_json checks the whole grammar.
        self.pos = start;
        let rest = &self.text[start..];
        let mut reader = serde_json::Deserializer::from_str(rest);
        let raw = <&RawValue>::deserialize(&mut reader).ok()?.get();
        // `raw` is a slice of `rest` starting where the object does.
        self.pos += raw.len();
        let fine = !attributes::contains_nul(raw) && !attributes::nests_deeper_than(raw, MAX_DEPTH);
        fine.then_some(())
    }

    /// Any JSON value without escapes, `depth` levels down (RFC 8259's
    /// grammar).
    fn value(&mut self, depth: usize) -> Option<()> {
        self.skip_whitespace();
        match self.peek()? {
            b'{' => {
                (depth < MAX_DEPTH).then_some(())?;
                self.pos += 1;
                if self.eat(b'}') {
                    return Some(());
                }
                loop {
                    self.string()?;
                    self.expect(b':')?;
                    self.value(depth + 1)?;
                    if self.eat(b'}') {
                        return Some(());
                    }
                    self.expect(b',')?;
                }
            }
            b'[' => {
                (depth < MAX_DEPTH).then_some(())?;
                self.pos += 1;
                if self.eat(b']') {
                    return Some(());
                }
                loop {
                    self.value(depth + 1)?;
                    if self.eat(b']') {
                        return Some(());
                    }
                    self.expect(b',')?;
                }
            }
            b'"' => self.string().map(drop),
            b'-' => {
                self.pos += 1;
                self.unsigned(self.pos - 1).map(drop)
            }
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            _ => self.number().map(drop),
        }
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        let next = self.bytes()[self.pos..].starts_with(word.as_bytes());
        next.then(|| self.pos += word.len())
    }

    /// One item, checked field by field against `fields`.
    fn item(&mut self, fields: &[Field]) -> Option<Item> {
        let mut item = Item {
            guid: None,
            company: None,
        };
        let mut seen = 0u32;
        // Items of a batch usually spell their fields in the same order:
        // the one after the last field found is tried first.
        let mut next = 0;
        let mut dates: [Option<NaiveDate>; 2] = [None, None];
        self.expect(b'{')?;
        if !self.eat(b'}') {
            loop {
                let index = self.key(fields, next)?;
                next = index + 1;
                if seen & (1 << index) != 0 {
                    return None;
                }
                seen |= 1 << index;
                self.expect(b':')?;
                let field = &fields[index];
                if self.null() {
                    if !nullable(field) {
                        return None;
                    }
                } else {
                    match field.kind {
                        FieldKind::Uuid => {
                            let guid = self.uuid()?;
                            match field.name {
                                "guid" => item.guid = Some(guid),
                                "company_guid" => item.company = Some(guid),
                                _ => {}
                            }
                        }
                        FieldKind::Text { max } => {
                            check_text(&self.text_value()?, max, field.required).ok()?;
                        }
                        FieldKind::OneOf(names) => {
                            let text = self.text_value()?;
                            names.contains(&text.as_ref()).then_some(())?;
                        }
                        FieldKind::Date => {
                            let date = parse_date(&self.text_value()?)?;
                            match field.name {
                                "start_date" => dates[0] = Some(date),
                                "end_date" => dates[1] = Some(date),
                                _ => {}
                            }
                        }
                        FieldKind::Quantity => {
                            let text = self.number()?;
                            // An integer token (i32 reads no `1.0`), ≥ 1.
                            let n: i32 = text.parse().ok()?;
                            (n >= 1).then_some(())?;
                        }
                        FieldKind::Measure => {
                            // Unsigned, so ≥ 0; finite unless huge, and far
                            // from where two float parsers could disagree
                            // on overflowing.
                            let text = self.number()?;
                            let short = text.len() < 300 && !text.contains(['e', 'E']);
                            if !short {
                                let n: f64 = text.parse().ok()?;
                                (n < 1e300).then_some(())?;
                            }
                        }
                        FieldKind::Object => self.attributes()?,
                    }
                }
                if self.eat(b'}') {
                    break;
                }
                self.expect(b',')?;
            }
        }
        let missing = fields
            .iter()
            .enumerate()
            .any(|(i, f)| f.required && seen & (1 << i) == 0);
        if missing {
            return None;
        }
        if let [Some(start), Some(end)] = dates {
            (end >= start).then_some(())?;
        }
        Some(item)
    }
}

/// Where the string whose text starts at `start` ends: the first `"`, `\`
/// or control character from there. Eight bytes at a time: strings are
/// most of a body.
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // The high bit of each byte below `n` (n ≤ 0x80). Borrows can mark
    // bytes above a marked one too, never below: the lowest mark is true.
    let below = |word: u64, n: u8| word.wrapping_sub(ONES * u64::from(n)) & !word & HIGHS;
    let mut at = start;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().ok()?);
        let found = below(word ^ (ONES * u64::from(b'"')), 1)
            | below(word ^ (ONES * u64::from(b'\\')), 1)
            | below(word, 0x20);
        if found != 0 {
            return Some(at + found.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    let tail = bytes
        .get(at..)?
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    Some(at + tail)
}

/// Byte-wise equality of short names, without a call to `memcmp`.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// Whether the typed items read `null` in `field` (as absent). The walk
/// reads it so everywhere, but the message carries the items as sent and
/// the worker reads them typed.
fn nullable(field: &Field) -> bool {
    !field.required && !matches!(field.name, "guid" | "quantity" | "status")
}

#[cfg(test)]
mod tests {
    //! Agreement with the walk and the worker is tested with the typed path,
    //! in `fast`, over every variant of every field; here, what the scanner
    //! reads and what it leaves to the others.
    use super::super::fast::tests::{agree, full_item};
    use super::super::{parse_submission, BatchError, Parsed};
    use super::*;
    use crate::bench::data;

    #[test]
    fn the_benchmark_pieces_are_scanned() {
        let load = &data::generate(300, 100, 1, 0.5)[0];
        for items in &load.batches {
            let body = data::request_body(items);
            let text = std::str::from_utf8(&body).expect("utf-8");
            let manifest = scan(Entity::Pieces, text, 1000).expect("scanned");
            assert_eq!(manifest, Manifest::of(&Batch::Pieces(items.clone())));
        }
    }

    #[test]
    fn items_without_a_guid_get_a_new_one_each() {
        let company = Uuid::now_v7();
        let body = format!(
            r#"[{{"company_guid":"{company}","number":"P-1","name":"One"}},
                {{"company_guid":"{company}","number":"P-2","name":"Two"}}]"#
        );
        let manifest = scan(Entity::Projects, &body, 10).expect("scanned");
        assert_eq!(manifest.companies, vec![company, company]);
        assert_ne!(manifest.guids[0], manifest.guids[1]);
        assert_eq!(manifest.owner(Uuid::nil()), company);
        let caller = Uuid::now_v7();
        let mixed = Manifest {
            companies: vec![company, Uuid::now_v7()],
            ..manifest.clone()
        };
        assert_eq!(mixed.owner(caller), caller);
        let empty = Manifest {
            guids: vec![],
            companies: vec![],
            ..manifest
        };
        assert_eq!(empty.owner(caller), caller);
    }

    /// Valid bodies the scanner does not read still pass, on another path.
    #[test]
    fn what_the_scanner_leaves_is_decided_by_the_others() {
        let (guid, company) = (Uuid::now_v7(), Uuid::now_v7());
        let project = |extra: &str| {
            format!(
                r#"[{{"guid":"{guid}","company_guid":"{company}","number":"P-1","name":"One"{extra}}}]"#
            )
        };
        for body in [
            project(r#","na\u006de":"N""#),
            project(r#","status":null"#),
            format!(r#"[{{"guid":null,"company_guid":"{company}","number":"P","name":"N"}}]"#),
            format!(
                r#"[{{"company_guid":"{}","number":"P","name":"N"}}]"#,
                company.simple()
            ),
        ] {
            assert_eq!(scan(Entity::Projects, &body, 10), None, "{body}");
            let parsed = parse_submission(Entity::Projects, body.as_bytes(), 10);
            assert!(parsed.is_ok(), "{body}: {parsed:?}");
        }
        let item = |guid: Uuid| {
            format!(r#"{{"guid":"{guid}","company_guid":"{company}","number":"P","name":"N"}}"#)
        };
        let two = format!("[{},{}]", item(guid), item(Uuid::now_v7()));
        assert!(scan(Entity::Projects, &two, 10).is_some());
        assert_eq!(scan(Entity::Projects, &two, 1), None);
        assert!(matches!(
            parse_submission(Entity::Projects, two.as_bytes(), 1),
            Err(BatchError::TooLarge { count: 2, .. })
        ));
        assert!(matches!(
            parse_submission(Entity::Projects, two.as_bytes(), 10),
            Ok(Parsed::AsSent(_))
        ));
    }

    #[test]
    fn strings_end_where_a_byte_at_a_time_says() {
        let alphabet = [
            "a", "\"", "\\", "\u{1}", "\u{1f}", " ", "é", "€", "\u{7f}", "~",
        ];
        let mut seed = 7u64;
        for _ in 0..5000 {
            let mut text = String::new();
            for _ in 0..(seed % 40) {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                text.push_str(alphabet[(seed >> 33) as usize % alphabet.len()]);
            }
            let bytes = text.as_bytes();
            for start in 0..bytes.len().min(3) {
                let naive = bytes[start..]
                    .iter()
                    .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                    .map(|i| start + i);
                assert_eq!(string_end(bytes, start), naive, "{text:?} from {start}");
            }
        }
    }

    #[test]
    fn escaped_values_are_decoded_before_the_rules() {
        let company = Uuid::now_v7();
        let project = |number: &str, description: &str| {
            format!(
                r#"[{{"company_guid":"{company}","number":"{number}","name":"N","description":"{description}"}}]"#
            )
        };
        let quotes = |n: usize| "\\\"".repeat(n);
        for (body, scanned) in [
            (project("P-1", r#"two\nlines, \"quoted\", \\ and \/"#), true),
            (project("P-1", r"caf\u00e9 \ud83d\ude00"), true),
            (project(r"\u0050-1", ""), true),
            // 64 characters, the limit for a number, and one more.
            (project(&quotes(64), ""), true),
            (project(&quotes(65), ""), false),
            (project(r"\u0020\t", ""), false),
            (project("P-1", r"nul \u0000"), false),
            (project("P-1", r"lone \ud800"), false),
            (project("P-1", r"bad \x"), false),
            (project("P-1", r"cut \u12"), false),
        ] {
            assert_eq!(
                scan(Entity::Projects, &body, 10).is_some(),
                scanned,
                "{body}"
            );
            agree(Entity::Projects, &body, false);
            if !scanned {
                assert!(
                    parse_submission(Entity::Projects, body.as_bytes(), 10).is_err(),
                    "{body}"
                );
            }
        }
        // A body that ends inside an escape.
        let cut = project("P-1", "x");
        let cut = format!("{}\\", &cut[..cut.len() - 5]);
        assert_eq!(scan(Entity::Projects, &cut, 10), None);
    }

    /// Random edits of valid bodies — a byte dropped, added or changed —
    /// make many near-misses; whatever of them the scanner accepts, the walk
    /// and the worker must read the same way.
    #[test]
    fn edited_bodies_are_accepted_only_as_the_walk_accepts_them() {
        const BYTES: &[u8] = b"\"\\{}[],:0123456789-+.eEnul aZ\t\x01";
        let mut seed = 0x5eed_u64;
        let mut next = |bound: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % bound.max(1)
        };
        let mut scanned = 0;
        for entity in Entity::ALL {
            let items = [full_item(entity), full_item(entity)];
            let valid = serde_json::to_string_pretty(&items).expect("body");
            for _ in 0..1500 {
                let mut bytes = valid.clone().into_bytes();
                for _ in 0..1 + next(2) {
                    let at = next(bytes.len());
                    let byte = BYTES[next(BYTES.len())];
                    match next(3) {
                        0 => drop(bytes.remove(at)),
                        1 => bytes.insert(at, byte),
                        _ => bytes[at] = byte,
                    }
                }
                let Ok(body) = String::from_utf8(bytes) else {
                    continue;
                };
                if scan(entity, &body, 10).is_some() {
                    scanned += 1;
                }
                agree(entity, &body, body.contains("\"guid\": \""));
            }
        }
        // Most edits break the body; enough of them must not to mean much.
        assert!(scanned > 500, "only {scanned} edited bodies scanned");
    }

    #[test]
    fn numbers_follow_the_json_grammar() {
        let (company, assembly) = (Uuid::now_v7(), Uuid::now_v7());
        let piece = |length: &str| {
            format!(
                r#"[{{"company_guid":"{company}","assembly_guid":"{assembly}","mark":"M","length_mm":{length}}}]"#
            )
        };
        for valid in [
            "0", "12", "12.5", "0.25", "1e3", "1E+3", "1.5e-3", "0.0", "2e299",
        ] {
            assert!(scan(Entity::Pieces, &piece(valid), 10).is_some(), "{valid}");
            agree(Entity::Pieces, &piece(valid), false);
        }
        for invalid in [
            "03", "1.", ".5", "1e", "1e+", "+1", "--1", "1..2", "0x10", "1_000", "Infinity", "NaN",
            "-1", "1e400", "-",
        ] {
            assert_eq!(scan(Entity::Pieces, &piece(invalid), 10), None, "{invalid}");
            let parsed = parse_submission(Entity::Pieces, piece(invalid).as_bytes(), 10);
            assert!(parsed.is_err(), "{invalid}: {parsed:?}");
        }
        // Not negative, but left to the others: the scanner reads no sign.
        assert_eq!(scan(Entity::Pieces, &piece("-0"), 10), None);
        agree(Entity::Pieces, &piece("-0"), false);
    }

    #[test]
    fn nothing_may_follow_the_array() {
        let company = Uuid::now_v7();
        let item = format!(r#"{{"company_guid":"{company}","number":"P","name":"N"}}"#);
        assert!(scan(Entity::Projects, &format!(" [ {item} ] \n"), 10).is_some());
        for body in [
            format!("[{item}] x"),
            format!("[{item}]]"),
            format!("[{item},]"),
            format!("[{item}"),
            format!("[,{item}]"),
        ] {
            assert_eq!(scan(Entity::Projects, &body, 10), None, "{body}");
        }
    }
}
