//! Requests are strict: a field the server does not know is refused, not ignored. Protobuf
//! decoders skip unknown fields, so a client that sends a field of a newer proto (or a
//! misspelt one from JSON through a gateway) to this server would have it silently dropped
//! and believe it applied: an `amount` on a Release, a `reason` on a comp. Every request
//! message of every `tally.v1` RPC is checked against the descriptors the server was built
//! with, nested messages included, before it is decoded: an unknown field is
//! INVALID_ARGUMENT / `UNKNOWN_FIELD`, naming the message and the field number. Responses
//! are read leniently (a newer server may add fields an older client has not heard of).
//!
//! The generated services and clients use [`StrictCodec`] (`build.rs`, `codec_path`).
//! `google.protobuf.*` messages inside a request (the ingest payload's `Struct`) have no
//! fields to add and are read by their own rules (`payload.rs`).

use super::status::error_status;
use prost::bytes::Buf;
use prost::{Message, Name};
use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::sync::OnceLock;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// How deep the check follows nested messages; deeper ones are left to the decoder, whose
/// own recursion limit refuses them.
const MAX_DEPTH: usize = 32;

/// A message's fields: number → the full name of its message type, if it is a message.
struct Shape {
    fields: HashMap<u32, Option<String>>,
}

struct Shapes {
    messages: HashMap<String, Shape>,
    /// Full names of the messages RPCs take.
    requests: HashSet<String>,
}

fn shapes() -> &'static Shapes {
    static SHAPES: OnceLock<Shapes> = OnceLock::new();
    SHAPES.get_or_init(|| {
        let set = prost_types::FileDescriptorSet::decode(super::proto::FILE_DESCRIPTOR_SET)
            .expect("the embedded descriptors decode");
        let mut messages = HashMap::new();
        let mut requests = HashSet::new();
        fn add(messages: &mut HashMap<String, Shape>, scope: &str, message: &prost_types::DescriptorProto) {
            let name = format!("{scope}.{}", message.name());
            let fields = message
                .field
                .iter()
                .map(|f| {
                    let nested = (f.r#type() == prost_types::field_descriptor_proto::Type::Message)
                        .then(|| f.type_name().trim_start_matches('.').to_string());
                    (f.number() as u32, nested)
                })
                .collect();
            for nested in &message.nested_type {
                add(messages, &name, nested);
            }
            messages.insert(name, Shape { fields });
        }
        for file in &set.file {
            for message in &file.message_type {
                add(&mut messages, file.package(), message);
            }
            for service in &file.service {
                for method in &service.method {
                    requests.insert(method.input_type().trim_start_matches('.').to_string());
                }
            }
        }
        Shapes { messages, requests }
    })
}

/// The first field of `bytes` (a message of type `name`) that the message does not have,
/// as (message, field number); `None` if every field is known, or if the bytes do not
/// parse (the decoder then says why).
fn unknown_field(bytes: &[u8], name: &str, depth: usize) -> Option<(String, u32)> {
    let shape = shapes().messages.get(name)?;
    let mut at = bytes;
    while !at.is_empty() {
        let key = varint(&mut at)?;
        let (number, wire) = ((key >> 3) as u32, key & 7);
        let Some(nested) = shape.fields.get(&number) else {
            return Some((name.to_string(), number));
        };
        match wire {
            0 => {
                varint(&mut at)?;
            }
            1 => at = at.get(8..)?,
            5 => at = at.get(4..)?,
            2 => {
                let len = usize::try_from(varint(&mut at)?).ok()?;
                let (value, rest) = (at.get(..len)?, at.get(len..)?);
                if let Some(nested) = nested {
                    if depth < MAX_DEPTH && !nested.starts_with("google.protobuf.") {
                        if let Some(found) = unknown_field(value, nested, depth + 1) {
                            return Some(found);
                        }
                    }
                }
                at = rest;
            }
            _ => return None,
        }
    }
    None
}

fn varint(at: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = at.split_first()?;
        *at = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(value);
        }
    }
    None
}

/// The refusal of a request with a field this server does not know.
pub fn unknown_field_status(message: &str, number: u32) -> Status {
    error_status(
        Code::InvalidArgument,
        "UNKNOWN_FIELD",
        &format!(
            "{message} has no field number {number}: this server does not know it (a newer client's field, \
             or a mistake); it is refused, not ignored"
        ),
        HashMap::from([
            ("message".to_string(), message.to_string()),
            ("field_number".to_string(), number.to_string()),
        ]),
    )
}

/// prost's codec, with requests checked for unknown fields first.
pub struct StrictCodec<T, U> {
    inner: ProstCodec<T, U>,
}

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        Self {
            inner: ProstCodec::default(),
        }
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        let name = U::full_name();
        StrictDecoder {
            strict: shapes().requests.contains(&name).then_some(name),
            inner: self.inner.decoder(),
            _pd: PhantomData,
        }
    }
}

pub struct StrictDecoder<U> {
    /// The message's full name, when it is a request.
    strict: Option<String>,
    inner: ProstDecoder<U>,
    _pd: PhantomData<U>,
}

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        if let Some(name) = &self.strict {
            let chunk = buf.chunk();
            let copied;
            let bytes = if chunk.len() == buf.remaining() {
                chunk
            } else {
                copied = buf.copy_to_bytes(buf.remaining());
                return self.decode_bytes(name.clone(), &copied);
            };
            if let Some((message, number)) = unknown_field(bytes, name, 0) {
                return Err(unknown_field_status(&message, number));
            }
        }
        self.inner.decode(buf)
    }

    fn buffer_settings(&self) -> tonic::codec::BufferSettings {
        self.inner.buffer_settings()
    }
}

impl<U: Message + Default> StrictDecoder<U> {
    fn decode_bytes(&self, name: String, bytes: &[u8]) -> Result<Option<U>, Status> {
        if let Some((message, number)) = unknown_field(bytes, &name, 0) {
            return Err(unknown_field_status(&message, number));
        }
        U::decode(bytes)
            .map(Some)
            .map_err(|e| Status::internal(format!("failed to decode Protobuf message: {e}")))
    }
}
