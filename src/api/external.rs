//! External events as partners send them: a type name and a JSON object, checked strictly
//! against the type's schema (unknown fields, wrong types and missing fields are refused,
//! each error naming the field), and rendered back the same way. The ranges and id rules
//! are the domain's (`domain::validate_body`), so a body that passes here and there is one
//! the ledger can record.

use super::payload::PayloadStruct;
use crate::domain::event::{ExternalBody, ExternalKind, ReversePolicy};
use crate::domain::{quote, validate_body, Rejection};
use serde_json::{Map, Value};

/// Longest JSON payload of one external event: the largest valid one (a rating slip with
/// 128-byte ids) is under 1 KiB; anything far larger is not one of ours.
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024;

/// What a field holds.
#[derive(Clone, Copy)]
enum Field {
    Text,
    Integer { max: u64 },
    Policy,
}

/// The fields of each type, all required: the schema `docs/INGEST.md` lists.
fn schema(kind: ExternalKind) -> &'static [(&'static str, &'static str, Field)] {
    const U32: Field = Field::Integer { max: u32::MAX as u64 };
    const U64: Field = Field::Integer { max: u64::MAX };
    match kind {
        ExternalKind::MemberEnrolled => &[("member_id", "payload.member_id", Field::Text)],
        ExternalKind::PointsAward => &[
            ("member_id", "payload.member_id", Field::Text),
            ("points", "payload.points", U64),
            ("promotion_id", "payload.promotion_id", Field::Text),
        ],
        ExternalKind::RatingSlipCompleted => &[
            ("member_id", "payload.member_id", Field::Text),
            ("slip_id", "payload.slip_id", Field::Text),
            ("game", "payload.game", Field::Text),
            ("average_bet_cents", "payload.average_bet_cents", U64),
            ("decisions_per_hour", "payload.decisions_per_hour", U32),
            ("minutes_played", "payload.minutes_played", U32),
            ("house_edge_bps", "payload.house_edge_bps", U32),
        ],
        ExternalKind::PointsReverse => &[
            ("member_id", "payload.member_id", Field::Text),
            ("original_external_id", "payload.original_external_id", Field::Text),
            ("policy", "payload.policy", Field::Policy),
            ("reason", "payload.reason", Field::Text),
        ],
    }
}

/// The type named `type_name`.
fn kind(type_name: &str) -> Result<ExternalKind, Rejection> {
    ExternalKind::from_name(type_name).ok_or_else(|| {
        let known: Vec<_> = ExternalKind::ALL.iter().map(|k| k.name()).collect();
        Rejection::invalid(
            "type",
            format!("unknown event type {}; known: {}", quote(type_name), known.join(", ")),
        )
    })
}

/// Parses and checks an external event from a protobuf `Struct` (what grpcurl and most
/// generated clients send for a JSON object). Struct numbers are doubles: a whole number
/// up to 2^53 becomes that integer; any other number stays fractional and is refused by
/// the schema as not a whole number.
///
/// A key the Struct carries twice is refused, as in JSON text (`parse_json`).
pub fn parse_struct(type_name: &str, payload: &PayloadStruct) -> Result<ExternalBody, Rejection> {
    let kind = kind(type_name)?;
    let mut object = Map::new();
    for entry in &payload.entries {
        let value = entry.value.as_ref().map_or(Value::Null, struct_value);
        if object.insert(entry.key.clone(), value).is_some() {
            return Err(Rejection::invalid(
                "payload",
                format!("names the key {} twice; each key may appear once", quote(&entry.key)),
            ));
        }
    }
    from_object(kind, &object)
}

/// Largest integer a double holds exactly.
const MAX_EXACT_DOUBLE: f64 = 9_007_199_254_740_992.0;

fn struct_value(value: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && (0.0..=MAX_EXACT_DOUBLE).contains(n) => {
            Value::from(*n as u64)
        }
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(list)) => Value::Array(list.values.iter().map(struct_value).collect()),
        Some(Kind::StructValue(inner)) => Value::Object(
            inner
                .fields
                .iter()
                .map(|(name, value)| (name.clone(), struct_value(value)))
                .collect(),
        ),
    }
}

/// Parses and checks an external event of type `type_name` from its JSON payload.
pub fn parse(type_name: &str, payload_json: &str) -> Result<ExternalBody, Rejection> {
    let kind = kind(type_name)?;
    if payload_json.len() > MAX_PAYLOAD_BYTES {
        return Err(Rejection::invalid(
            "payload",
            format!("is longer than {MAX_PAYLOAD_BYTES} bytes"),
        ));
    }
    let value = parse_json(payload_json).map_err(|e| Rejection::invalid("payload", e))?;
    let Value::Object(object) = value else {
        return Err(Rejection::invalid("payload", "must be a JSON object"));
    };
    from_object(kind, &object)
}

/// Reads JSON text, refusing an object that names a key twice. serde_json's `Value` keeps
/// the last of repeated keys, and other readers keep the first, so
/// `{"points":1,"points":999999}` is not one event but two, depending on who reads it: we
/// refuse it, naming the key. The error says what is wrong, in words for the caller.
pub fn parse_json(text: &str) -> Result<Value, String> {
    let mut reader = serde_json::Deserializer::from_str(text);
    let parsed = serde::Deserialize::deserialize(&mut reader).and_then(|Distinct(value)| {
        reader.end()?;
        Ok(value)
    });
    parsed.map_err(|e| match e.classify() {
        serde_json::error::Category::Data => e.to_string(),
        _ => format!("is not valid JSON: {e}"),
    })
}

/// A JSON value whose objects each name a key once.
struct Distinct(Value);

impl<'de> serde::Deserialize<'de> for Distinct {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DistinctVisitor).map(Distinct)
    }
}

/// Builds a `Value` as serde_json's own visitor does, but refuses a repeated key.
struct DistinctVisitor;

impl<'de> serde::de::Visitor<'de> for DistinctVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        serde::Deserialize::deserialize(deserializer).map(|Distinct(value)| value)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut values = Vec::new();
        while let Some(Distinct(value)) = seq.next_element()? {
            values.push(value);
        }
        Ok(Value::Array(values))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "names the key {} twice; each key may appear once",
                    quote(&key)
                )));
            }
            let Distinct(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// Checks a JSON object against `kind`'s schema and builds the body.
pub fn from_object(kind: ExternalKind, object: &Map<String, Value>) -> Result<ExternalBody, Rejection> {
    let fields = schema(kind);
    if let Some(unknown) = object.keys().find(|k| !fields.iter().any(|(name, _, _)| name == k)) {
        let expected: Vec<_> = fields.iter().map(|(name, _, _)| *name).collect();
        return Err(Rejection::invalid(
            "payload",
            format!(
                "unknown field {} for {}; expected: {}",
                quote(unknown),
                kind.name(),
                expected.join(", ")
            ),
        ));
    }
    let get = |name: &str| -> Result<&Value, Rejection> {
        let (_, path, _) = fields.iter().find(|(n, _, _)| *n == name).expect("a schema field");
        object.get(name).ok_or_else(|| Rejection::invalid(path, "is required"))
    };
    let text = |name: &str| -> Result<String, Rejection> {
        let (_, path, _) = fields.iter().find(|(n, _, _)| *n == name).expect("a schema field");
        match get(name)? {
            Value::String(s) => Ok(s.clone()),
            other => Err(Rejection::invalid(
                path,
                format!("must be a string, got {}", describe(other)),
            )),
        }
    };
    let integer = |name: &str| -> Result<u64, Rejection> {
        let (_, path, field) = fields.iter().find(|(n, _, _)| *n == name).expect("a schema field");
        let Field::Integer { max } = field else {
            unreachable!("an integer field")
        };
        match get(name)? {
            Value::Number(n) => match n.as_u64() {
                Some(v) if v <= *max => Ok(v),
                _ => Err(Rejection::invalid(
                    path,
                    format!("must be a whole number from 0 to {max}, got {n}"),
                )),
            },
            other => Err(Rejection::invalid(
                path,
                format!("must be a number, got {}", describe(other)),
            )),
        }
    };
    let narrow = |v: u64| u32::try_from(v).expect("checked against the u32 bound");
    let body = match kind {
        ExternalKind::MemberEnrolled => ExternalBody::MemberEnrolled {
            member_id: text("member_id")?,
        },
        ExternalKind::PointsAward => ExternalBody::PointsAward {
            member_id: text("member_id")?,
            points: integer("points")?,
            promotion_id: text("promotion_id")?,
        },
        ExternalKind::RatingSlipCompleted => ExternalBody::RatingSlipCompleted {
            member_id: text("member_id")?,
            slip_id: text("slip_id")?,
            game: text("game")?,
            average_bet_cents: integer("average_bet_cents")?,
            decisions_per_hour: narrow(integer("decisions_per_hour")?),
            minutes_played: narrow(integer("minutes_played")?),
            house_edge_bps: narrow(integer("house_edge_bps")?),
        },
        ExternalKind::PointsReverse => ExternalBody::PointsReverse {
            member_id: text("member_id")?,
            original_external_id: text("original_external_id")?,
            policy: match text("policy")?.as_str() {
                "cap_to_available" => ReversePolicy::CapToAvailable,
                "all_or_nothing" => ReversePolicy::AllOrNothing,
                other => {
                    return Err(Rejection::invalid(
                        "payload.policy",
                        format!(
                            "must be \"cap_to_available\" or \"all_or_nothing\", got {}",
                            quote(other)
                        ),
                    ))
                }
            },
            reason: text("reason")?,
        },
    };
    validate_body(&body)?;
    Ok(body)
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {}", quote(s)),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// The body as the JSON object a partner sends.
pub fn to_json(body: &ExternalBody) -> Value {
    match body {
        ExternalBody::MemberEnrolled { member_id } => serde_json::json!({ "member_id": member_id }),
        ExternalBody::PointsAward {
            member_id,
            points,
            promotion_id,
        } => serde_json::json!({ "member_id": member_id, "points": points, "promotion_id": promotion_id }),
        ExternalBody::RatingSlipCompleted {
            member_id,
            slip_id,
            game,
            average_bet_cents,
            decisions_per_hour,
            minutes_played,
            house_edge_bps,
        } => serde_json::json!({
            "member_id": member_id,
            "slip_id": slip_id,
            "game": game,
            "average_bet_cents": average_bet_cents,
            "decisions_per_hour": decisions_per_hour,
            "minutes_played": minutes_played,
            "house_edge_bps": house_edge_bps,
        }),
        ExternalBody::PointsReverse {
            member_id,
            original_external_id,
            policy,
            reason,
        } => serde_json::json!({
            "member_id": member_id,
            "original_external_id": original_external_id,
            "policy": policy.name(),
            "reason": reason,
        }),
    }
}
