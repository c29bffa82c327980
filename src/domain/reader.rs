//! Reading a body of items: the one path for valid and invalid bodies, on
//! the api and in the worker alike.
//!
//! serde_json reads the body, borrowing its strings; each field's type reads
//! its own value (see `values`) and says what is wrong with it. Nothing
//! stops at the first problem: every item and field is read, and every
//! problem is listed. A value is never re-encoded, so the api can forward
//! the body as sent and the worker, reading the same text the same way,
//! stores exactly what was accepted.
//!
//! serde_json gives up on a whole body for a few values it cannot read at
//! all — an escape that stands for no character, a number beyond a double.
//! Only then is the body read a second, slower way, that takes each value's
//! text first and lets the same field types read it on its own, so that the
//! problem is pinned on its item and field.
//!
//! deserr (meilisearch's error-collecting deserializer) was the other
//! candidate, but it reads from a value tree: serde_json's `Value` keeps the
//! last of two equal keys, where a body must be refused, and building the
//! tree for every item costs an allocation per string.

use super::items::{Item, Problems};
use super::{Batch, BatchError, Entity, FieldError, Operation, Work};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::{borrow::Cow, fmt, marker::PhantomData};
use uuid::Uuid;

/// Reads a body of `T` items (of `entity`): at most `limit`, every item
/// valid, no GUID given twice. Items without a GUID get a new UUIDv7.
pub fn read_items<'a, T: Item<'a>>(
    entity: Entity,
    body: &'a [u8],
    limit: usize,
) -> Result<Vec<T>, BatchError> {
    let invalid = |message: String| BatchError::Invalid(vec![FieldError::body(message)]);
    // One pass over the whole body checks UTF-8 far faster than the parser
    // checks it string by string.
    let text = std::str::from_utf8(body)
        .map_err(|e| invalid(format!("malformed JSON: the body is not UTF-8 ({e})")))?;
    if !text.trim_start().starts_with('[') {
        return Err(match serde_json::from_str::<IgnoredAny>(text) {
            Ok(_) => invalid("the body must be a JSON array of items".into()),
            Err(e) => invalid(format!("malformed JSON: {e}")),
        });
    }
    let read = |pass| {
        let mut read = Read {
            limit,
            pass,
            count: 0,
            items: Vec::new(),
            given: Vec::new(),
            errors: Vec::new(),
        };
        let mut parser = serde_json::Deserializer::from_str(text);
        parser
            .deserialize_seq(Body(&mut read))
            .and_then(|()| parser.end())
            .map(|()| read)
    };
    let read = read(Pass::Direct)
        .or_else(|_| read(Pass::ValueByValue))
        .map_err(|e| invalid(format!("malformed JSON: {e}")))?;
    read.finish(entity)
}

/// How values are read.
#[derive(Clone, Copy, PartialEq)]
enum Pass {
    /// Each straight into its field's type.
    Direct,
    /// Each value's text first, then its field's type reads that text: a
    /// value serde_json cannot read is a problem of its field, not the end
    /// of the body.
    ValueByValue,
}

/// What reading has found so far.
struct Read<T> {
    limit: usize,
    pass: Pass,
    /// Items in the body, those past the limit included.
    count: usize,
    items: Vec<T>,
    /// (GUID, index) of every item that gave a valid GUID.
    given: Vec<(Uuid, usize)>,
    errors: Vec<FieldError>,
}

impl<T> Read<T> {
    fn finish(mut self, entity: Entity) -> Result<Vec<T>, BatchError> {
        if self.count > self.limit {
            return Err(BatchError::TooLarge {
                entity,
                count: self.count,
                limit: self.limit,
            });
        }
        // Sorting is cheaper than hashing every GUID; by (GUID, index), so
        // the first of equal GUIDs comes first.
        self.given.sort_unstable();
        for pair in self.given.chunk_by(|a, b| a.0 == b.0) {
            for (_, index) in &pair[1..] {
                let message = format!("duplicates the guid of item {}", pair[0].1);
                self.errors.push(FieldError::item(*index, "guid", message));
            }
        }
        if self.errors.is_empty() {
            return Ok(self.items);
        }
        self.errors.sort_by_key(|e| e.index);
        Err(BatchError::Invalid(self.errors))
    }
}

/// The body's array.
struct Body<'r, T>(&'r mut Read<T>);

impl<'de, T: Item<'de>> Visitor<'de> for Body<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array of items")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let read = self.0;
        loop {
            if read.count == read.limit {
                // Past the limit, items are only counted.
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    read.count += 1;
                }
                return Ok(());
            }
            let index = read.count;
            let seed = ItemSeed::<T> {
                read: &mut *read,
                index,
                item: PhantomData,
            };
            let more = match seed.read.pass {
                Pass::Direct => seq.next_element_seed(seed)?.is_some(),
                // An item serde_json cannot read whole is still only that
                // item's problem.
                Pass::ValueByValue => match seq.next_element::<&'de RawValue>()? {
                    Some(item) if item.get().starts_with('{') => {
                        let mut reader = serde_json::Deserializer::from_str(item.get());
                        seed.deserialize(&mut reader).map_err(de::Error::custom)?;
                        true
                    }
                    Some(_) => seed.not_an_object::<A::Error>().map(|()| true)?,
                    None => false,
                },
            };
            if !more {
                return Ok(());
            }
            read.count += 1;
        }
    }
}

/// One item of the body, at `index`.
struct ItemSeed<'r, T> {
    read: &'r mut Read<T>,
    index: usize,
    item: PhantomData<T>,
}

impl<'de, T: Item<'de>> DeserializeSeed<'de> for ItemSeed<'_, T> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<T> ItemSeed<'_, T> {
    fn not_an_object<E>(self) -> Result<(), E> {
        self.read.errors.push(FieldError {
            index: Some(self.index),
            field: None,
            message: "each item must be a JSON object".into(),
        });
        Ok(())
    }
}

impl<'de, T: Item<'de>> Visitor<'de> for ItemSeed<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an item")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let fields = T::FIELDS;
        let pass = self.read.pass;
        let mut draft = T::Draft::default();
        let mut seen = 0u64;
        let mut problems = Problems {
            index: self.index,
            errors: &mut self.read.errors,
        };
        let before = problems.errors.len();
        // Items usually name their fields in the same order: the one after
        // the last found is tried first.
        let mut next = 0;
        while let Some(key) = map.next_key_seed(Key(pass))? {
            let named = |at: &usize| fields.get(*at).is_some_and(|f| f.name.as_bytes() == &*key);
            let found = Some(next).filter(named);
            let Some(at) = found.or_else(|| (0..fields.len()).find(named)) else {
                map.next_value::<IgnoredAny>()?;
                problems.add(&String::from_utf8_lossy(&key), "unknown field".into());
                continue;
            };
            if seen & 1 << at != 0 {
                map.next_value::<IgnoredAny>()?;
                problems.add(fields[at].name, "is named more than once".into());
                continue;
            }
            seen |= 1 << at;
            next = at + 1;
            if pass == Pass::Direct {
                map.next_value_seed(FieldSeed::<T> {
                    draft: &mut draft,
                    at,
                    item: PhantomData,
                })?;
                continue;
            }
            let value: &'de RawValue = map.next_value()?;
            let mut reader = serde_json::Deserializer::from_str(value.get());
            if T::read_field(&mut draft, at, &mut reader).is_err() {
                T::unreadable(&mut draft, at, value.get());
            }
        }
        let given = T::given_guid(&draft);
        let item = T::from_draft(draft, &mut problems);
        if let Some(guid) = given {
            self.read.given.push((guid, self.index));
        }
        match item {
            Some(item) if self.read.errors.len() == before => self.read.items.push(item),
            _ => {}
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.not_an_object()
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        self.not_an_object()
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        self.not_an_object()
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        self.not_an_object()
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        self.not_an_object()
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        self.not_an_object()
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.not_an_object()
    }
}

/// The value of field `at`, read into the draft.
struct FieldSeed<'r, 'de, T: Item<'de>> {
    draft: &'r mut T::Draft,
    at: usize,
    item: PhantomData<(&'de (), T)>,
}

impl<'de, T: Item<'de>> DeserializeSeed<'de> for FieldSeed<'_, 'de, T> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        T::read_field(self.draft, self.at, d)
    }
}

/// How a key is read. Read directly, as a string: serde_json then checks
/// it whole, and gives up on the body for an unpaired surrogate. Read value
/// by value, as bytes, escapes decoded but not checked (the item's text was
/// checked whole already): a key with an unpaired surrogate names no field
/// and is reported as unknown.
#[derive(Clone, Copy)]
struct Key(Pass);

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, [u8]>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        match self.0 {
            Pass::Direct => d.deserialize_str(self),
            Pass::ValueByValue => d.deserialize_bytes(self),
        }
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, [u8]>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(key.as_bytes()))
    }

    fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(key.as_bytes().to_vec()))
    }

    fn visit_borrowed_bytes<E>(self, key: &'de [u8]) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(key))
    }

    fn visit_bytes<E>(self, key: &[u8]) -> Result<Self::Value, E> {
        Ok(Cow::Owned(key.to_vec()))
    }
}

impl<'a> Batch<'a> {
    /// Reads a body of `entity` items (see [`read_items`]).
    pub fn read(entity: Entity, body: &'a [u8], limit: usize) -> Result<Self, BatchError> {
        let e = entity;
        Ok(match entity {
            Entity::Projects => Batch::Projects(read_items(e, body, limit)?),
            Entity::Components => Batch::Components(read_items(e, body, limit)?),
            Entity::Assemblies => Batch::Assemblies(read_items(e, body, limit)?),
            Entity::Pieces => Batch::Pieces(read_items(e, body, limit)?),
            Entity::Articles => Batch::Articles(read_items(e, body, limit)?),
        })
    }
}

impl<'a> Work<'a> {
    /// Reads a body of `entity` items to upsert, or of keys to delete.
    pub fn read(
        operation: Operation,
        entity: Entity,
        body: &'a [u8],
        limit: usize,
    ) -> Result<Self, BatchError> {
        Ok(match operation {
            Operation::Upsert => Work::Upsert(Batch::read(entity, body, limit)?),
            Operation::Delete => Work::Delete(entity, read_items(entity, body, limit)?),
        })
    }
}
