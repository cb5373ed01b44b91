//! The ingest payload as the wire carries it. `google.protobuf.Struct` is a map on the
//! wire — a repeated entry of key and value — and prost's map keeps the last of two entries
//! with one key, so `points: 1` then `points: 999999` would silently be the second. The
//! build maps `.google.protobuf.Struct` here instead (`build.rs`, `extern_path`): the same
//! bytes, read as the list of entries in the order sent, so `external::parse_struct` sees a
//! repeated key and refuses it. Nested values stay `prost_types`: no payload field is an
//! object, and the schema refuses one whatever its keys.

/// A `google.protobuf.Struct`, its entries in wire order, repeated keys kept.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PayloadStruct {
    /// `map<string, Value> fields = 1`, as the repeated entries it is on the wire.
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<PayloadEntry>,
}

/// One entry of a Struct's `fields` map: the wire form of a map entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PayloadEntry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<prost_types::Value>,
}

impl From<prost_types::Struct> for PayloadStruct {
    fn from(object: prost_types::Struct) -> Self {
        PayloadStruct {
            entries: object
                .fields
                .into_iter()
                .map(|(key, value)| PayloadEntry {
                    key,
                    value: Some(value),
                })
                .collect(),
        }
    }
}
