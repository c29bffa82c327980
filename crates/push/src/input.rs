//! Reading the input files: a JSON array or NDJSON each, `-` for stdin.
//!
//! Items are kept as their original JSON text (checked, not parsed into
//! values): memory stays close to the input size, and a batch body is the
//! items' own bytes, so its hash — and idempotency key — depends only on
//! the input.

use super::error::PushError;
use serde::de::IgnoredAny;
use std::{
    io::Read,
    ops::Range,
    path::{Path, PathBuf},
};

/// The name that means standard input.
pub const STDIN: &str = "-";

/// Every item of every input, in input order.
#[derive(Debug, Default)]
pub struct Items {
    sources: Vec<Vec<u8>>,
    /// (source index, byte range of the item's JSON text)
    spans: Vec<(usize, Range<usize>)>,
}

impl Items {
    /// Reads and checks every file. Blocking: run before anything else.
    pub fn read(paths: &[PathBuf]) -> Result<Items, PushError> {
        let mut items = Items::default();
        let mut stdin_used = false;
        for path in paths {
            if path.as_os_str() == STDIN {
                if stdin_used {
                    return Err(PushError::StdinTwice);
                }
                stdin_used = true;
            }
            let bytes = read_source(path)?;
            items.add(path, bytes)?;
        }
        Ok(items)
    }

    /// Adds one input's bytes, splitting them into items.
    pub fn add(&mut self, path: &Path, bytes: Vec<u8>) -> Result<(), PushError> {
        let source = self.sources.len();
        let spans = split(path, &bytes)?;
        self.spans
            .extend(spans.into_iter().map(|span| (source, span)));
        self.sources.push(bytes);
        Ok(())
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// True when there are no items.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The JSON text of item `index`.
    pub fn item(&self, index: usize) -> &[u8] {
        let (source, span) = &self.spans[index];
        &self.sources[*source][span.clone()]
    }

    /// The request body of the items in `range`: a JSON array of their text.
    pub fn body(&self, range: Range<usize>) -> Vec<u8> {
        let size: usize = range.clone().map(|i| self.item(i).len() + 1).sum();
        let mut body = Vec::with_capacity(size + 2);
        body.push(b'[');
        for (n, index) in range.enumerate() {
            if n > 0 {
                body.push(b',');
            }
            body.extend_from_slice(self.item(index));
        }
        body.push(b']');
        body
    }
}

fn read_source(path: &Path) -> Result<Vec<u8>, PushError> {
    let read = |path: &Path| -> std::io::Result<Vec<u8>> {
        if path.as_os_str() == STDIN {
            let mut bytes = Vec::new();
            std::io::stdin().lock().read_to_end(&mut bytes)?;
            Ok(bytes)
        } else {
            std::fs::read(path)
        }
    };
    read(path).map_err(|source| PushError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The byte ranges of the items in one input.
fn split(path: &Path, bytes: &[u8]) -> Result<Vec<Range<usize>>, PushError> {
    let start = if bytes.starts_with(b"\xEF\xBB\xBF") {
        3
    } else {
        0
    };
    let first = skip_whitespace(bytes, start);
    if bytes.get(first) == Some(&b'[') {
        split_array(path, bytes, first)
    } else {
        split_lines(path, bytes, start)
    }
}

/// NDJSON: one item per non-blank line.
fn split_lines(path: &Path, bytes: &[u8], start: usize) -> Result<Vec<Range<usize>>, PushError> {
    let mut spans = Vec::new();
    let mut line_start = start;
    while line_start < bytes.len() {
        let line_end = bytes[line_start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |n| line_start + n);
        let begin = skip_whitespace(bytes, line_start);
        if begin < line_end {
            let end = trim_end(bytes, begin, line_end);
            check_item(path, bytes, begin..end, spans.len())?;
            if let Err(error) = serde_json::from_slice::<IgnoredAny>(&bytes[begin..end]) {
                return Err(invalid_json(path, bytes, begin, &error));
            }
            spans.push(begin..end);
        }
        line_start = line_end + 1;
    }
    Ok(spans)
}

/// A JSON array starting at `open` (its `[`): each element is an item.
fn split_array(path: &Path, bytes: &[u8], open: usize) -> Result<Vec<Range<usize>>, PushError> {
    let mut spans = Vec::new();
    let mut pos = skip_whitespace(bytes, open + 1);
    let closed = if bytes.get(pos) == Some(&b']') {
        pos + 1
    } else {
        loop {
            check_item(path, bytes, pos..bytes.len(), spans.len())?;
            let mut stream =
                serde_json::Deserializer::from_slice(&bytes[pos..]).into_iter::<IgnoredAny>();
            match stream.next() {
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(invalid_json(path, bytes, pos, &error)),
                None => return Err(unexpected(path, bytes, pos, "unexpected end of input")),
            }
            let end = pos + stream.byte_offset();
            spans.push(pos..end);
            let next = skip_whitespace(bytes, end);
            match bytes.get(next) {
                Some(b',') => pos = skip_whitespace(bytes, next + 1),
                Some(b']') => break next + 1,
                Some(_) => return Err(unexpected(path, bytes, next, "expected `,` or `]`")),
                None => return Err(unexpected(path, bytes, next, "unexpected end of input")),
            }
        }
    };
    let rest = skip_whitespace(bytes, closed);
    if rest < bytes.len() {
        return Err(unexpected(
            path,
            bytes,
            rest,
            "trailing characters after the array",
        ));
    }
    Ok(spans)
}

/// Items are objects; anything else is refused before sending.
fn check_item(path: &Path, bytes: &[u8], span: Range<usize>, item: usize) -> Result<(), PushError> {
    match bytes.get(span.start) {
        Some(b'{') => Ok(()),
        None => Err(unexpected(
            path,
            bytes,
            span.start,
            "unexpected end of input",
        )),
        Some(_) => {
            // Say "invalid JSON" when it is, "not an object" only when it parses.
            let mut stream = serde_json::Deserializer::from_slice(&bytes[span.clone()])
                .into_iter::<IgnoredAny>();
            if let Some(Err(error)) = stream.next() {
                return Err(invalid_json(path, bytes, span.start, &error));
            }
            let (line, column) = position(bytes, span.start);
            Err(PushError::NotAnObject {
                path: path.to_owned(),
                line,
                column,
                item,
            })
        }
    }
}

fn skip_whitespace(bytes: &[u8], from: usize) -> usize {
    bytes[from.min(bytes.len())..]
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map_or(bytes.len(), |n| from + n)
}

fn trim_end(bytes: &[u8], begin: usize, end: usize) -> usize {
    bytes[begin..end]
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(begin, |n| begin + n + 1)
}

/// 1-based line and column of byte `offset`.
fn position(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |n| n + 1);
    (line, before.len() - line_start + 1)
}

/// A parse error of the slice starting at `start`, positioned in the whole input.
fn invalid_json(path: &Path, bytes: &[u8], start: usize, error: &serde_json::Error) -> PushError {
    let (base_line, base_column) = position(bytes, start);
    let (line, column) = if error.line() <= 1 {
        (base_line, base_column + error.column().saturating_sub(1))
    } else {
        (base_line + error.line() - 1, error.column())
    };
    // serde_json appends the slice-relative position; ours replaces it.
    let text = error.to_string();
    let message = text
        .rsplit_once(" at line ")
        .map_or(text.as_str(), |(message, _)| message)
        .to_owned();
    PushError::InvalidJson {
        path: path.to_owned(),
        line,
        column,
        message,
    }
}

fn unexpected(path: &Path, bytes: &[u8], offset: usize, message: &str) -> PushError {
    let (line, column) = position(bytes, offset);
    PushError::InvalidJson {
        path: path.to_owned(),
        line,
        column,
        message: message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(text: &str) -> Result<Vec<String>, PushError> {
        let mut items = Items::default();
        items.add(Path::new("in.json"), text.as_bytes().to_vec())?;
        Ok((0..items.len())
            .map(|i| String::from_utf8_lossy(items.item(i)).into_owned())
            .collect())
    }

    #[test]
    fn an_array_is_split_into_its_elements_verbatim() {
        let got = items(" \n[ {\"a\": [1, {\"b\": \"],\"}]} ,\n{\"c\":2}\n]\n").expect("items");
        assert_eq!(got, vec!["{\"a\": [1, {\"b\": \"],\"}]}", "{\"c\":2}"]);
    }

    #[test]
    fn ndjson_is_split_by_line_skipping_blank_lines() {
        let got = items("{\"a\":1}\r\n\n  {\"b\":[2]}  \n").expect("items");
        assert_eq!(got, vec!["{\"a\":1}", "{\"b\":[2]}"]);
    }

    #[test]
    fn empty_inputs_have_no_items() {
        assert!(items("").expect("items").is_empty());
        assert!(items(" [ ] ").expect("items").is_empty());
        assert!(items("\n\n").expect("items").is_empty());
    }

    #[test]
    fn a_body_is_a_json_array_of_the_items() {
        let mut items = Items::default();
        items
            .add(Path::new("a"), b"{\"x\":1}\n{\"x\":2}\n".to_vec())
            .expect("a");
        items
            .add(Path::new("b"), b"[{\"x\":3}]".to_vec())
            .expect("b");
        assert_eq!(items.body(1..3), b"[{\"x\":2},{\"x\":3}]");
        let all: serde_json::Value = serde_json::from_slice(&items.body(0..3)).expect("json");
        assert_eq!(all.as_array().map(Vec::len), Some(3));
    }

    #[test]
    fn invalid_json_is_reported_with_its_position_in_the_file() {
        let error = items("{\"a\":1}\n{\"a\":}\n").expect_err("invalid");
        assert!(
            matches!(
                error,
                PushError::InvalidJson {
                    line: 2,
                    column: 6,
                    ..
                }
            ),
            "{error:?}"
        );
        let error = items("[\n  {\"a\":1},\n  {\"a\" 2}\n]").expect_err("invalid");
        assert!(
            matches!(error, PushError::InvalidJson { line: 3, .. }),
            "{error:?}"
        );
        for broken in [
            "[{\"a\":1},]",
            "[{\"a\":1}",
            "[{\"a\":1}] x",
            "[{\"a\":1} {}]",
        ] {
            assert!(
                matches!(items(broken), Err(PushError::InvalidJson { .. })),
                "{broken}"
            );
        }
    }

    #[test]
    fn items_that_are_not_objects_are_refused() {
        let error = items("[{\"a\":1}, 2]").expect_err("not an object");
        assert!(
            matches!(error, PushError::NotAnObject { item: 1, .. }),
            "{error:?}"
        );
        let error = items("{\"a\":1}\n\"x\"\n").expect_err("not an object");
        assert!(
            matches!(error, PushError::NotAnObject { line: 2, .. }),
            "{error:?}"
        );
    }
}
