//! Spark's data types and literals as Arrow's and DataFusion's, both ways,
//! and Spark's type names (`int`, `decimal(10,2)`, a JSON `StructType`).

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Fields, IntervalUnit, Schema, TimeUnit};
use datafusion::common::ScalarValue;
use ignis_core::error::{IgnisError, Result};

use super::proto::spark::data_type::{self as dt, Kind};
use super::proto::spark::expression::literal::LiteralType;
use super::proto::spark::{self as sc, expression::Literal};

/// The session time zone Ignis answers with (Spark's default is the JVM's; ours is UTC).
pub const SESSION_TIME_ZONE: &str = "UTC";

fn kind(k: Kind) -> sc::DataType {
    sc::DataType { kind: Some(k) }
}

/// An Arrow type as the Spark type a pyspark client shows.
pub fn to_spark(t: &DataType) -> sc::DataType {
    match t {
        DataType::Null => kind(Kind::Null(dt::Null {})),
        DataType::Boolean => kind(Kind::Boolean(dt::Boolean {})),
        DataType::Int8 => kind(Kind::Byte(dt::Byte {})),
        DataType::Int16 | DataType::UInt8 => kind(Kind::Short(dt::Short {})),
        DataType::Int32 | DataType::UInt16 => kind(Kind::Integer(dt::Integer {})),
        DataType::Int64 | DataType::UInt32 => kind(Kind::Long(dt::Long {})),
        DataType::UInt64 => kind(Kind::Decimal(dt::Decimal { precision: Some(20), scale: Some(0) })),
        DataType::Float16 | DataType::Float32 => kind(Kind::Float(dt::Float {})),
        DataType::Float64 => kind(Kind::Double(dt::Double {})),
        DataType::Decimal32(p, s) | DataType::Decimal64(p, s) | DataType::Decimal128(p, s) => {
            kind(Kind::Decimal(dt::Decimal { precision: Some(i32::from(*p)), scale: Some(i32::from(*s)) }))
        }
        DataType::Decimal256(_, s) => {
            kind(Kind::Decimal(dt::Decimal { precision: Some(38), scale: Some(i32::from(*s)) }))
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => kind(Kind::String(dt::String {})),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => {
            kind(Kind::Binary(dt::Binary {}))
        }
        DataType::Date32 | DataType::Date64 => kind(Kind::Date(dt::Date {})),
        DataType::Timestamp(_, Some(_)) => kind(Kind::Timestamp(dt::Timestamp {})),
        DataType::Timestamp(_, None) => kind(Kind::TimestampNtz(dt::TimestampNtz {})),
        DataType::Duration(_) => {
            kind(Kind::DayTimeInterval(dt::DayTimeInterval { start_field: Some(0), end_field: Some(3) }))
        }
        DataType::Interval(_) => kind(Kind::CalendarInterval(dt::CalendarInterval {})),
        DataType::List(f) | DataType::LargeList(f) | DataType::ListView(f) | DataType::FixedSizeList(f, _) => {
            kind(Kind::Array(Box::new(dt::Array {
                element_type: Some(Box::new(to_spark(f.data_type()))),
                contains_null: f.is_nullable(),
            })))
        }
        DataType::Struct(fields) => kind(Kind::Struct(struct_type(fields))),
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => kind(Kind::Map(Box::new(dt::Map {
                key_type: Some(Box::new(to_spark(kv[0].data_type()))),
                value_type: Some(Box::new(to_spark(kv[1].data_type()))),
                value_contains_null: kv[1].is_nullable(),
            }))),
            other => kind(Kind::Unparsed(dt::Unparsed { data_type_string: other.to_string() })),
        },
        DataType::Dictionary(_, value) => to_spark(value),
        other => kind(Kind::Unparsed(dt::Unparsed { data_type_string: other.to_string() })),
    }
}

/// An Arrow schema as a Spark `StructType`.
pub fn schema_to_spark(schema: &Schema) -> sc::DataType {
    kind(Kind::Struct(struct_type(schema.fields())))
}

fn struct_type(fields: &Fields) -> dt::Struct {
    dt::Struct {
        fields: fields
            .iter()
            .map(|f| dt::StructField {
                name: f.name().clone(),
                data_type: Some(to_spark(f.data_type())),
                nullable: f.is_nullable(),
                metadata: None,
            })
            .collect(),
    }
}

/// A Spark type from the wire as an Arrow type.
pub fn from_spark(t: &sc::DataType) -> Result<DataType> {
    let Some(k) = &t.kind else { return Err(invalid("a data type without a kind")) };
    Ok(match k {
        Kind::Null(_) => DataType::Null,
        Kind::Binary(_) => DataType::Binary,
        Kind::Boolean(_) => DataType::Boolean,
        Kind::Byte(_) => DataType::Int8,
        Kind::Short(_) => DataType::Int16,
        Kind::Integer(_) => DataType::Int32,
        Kind::Long(_) => DataType::Int64,
        Kind::Float(_) => DataType::Float32,
        Kind::Double(_) => DataType::Float64,
        Kind::Decimal(d) => decimal(d.precision.unwrap_or(10), d.scale.unwrap_or(0))?,
        Kind::String(_) | Kind::Char(_) | Kind::VarChar(_) => DataType::Utf8,
        Kind::Date(_) => DataType::Date32,
        Kind::Timestamp(_) => DataType::Timestamp(TimeUnit::Microsecond, Some(SESSION_TIME_ZONE.into())),
        Kind::TimestampNtz(_) => DataType::Timestamp(TimeUnit::Microsecond, None),
        Kind::CalendarInterval(_) => DataType::Interval(IntervalUnit::MonthDayNano),
        Kind::YearMonthInterval(_) => DataType::Interval(IntervalUnit::YearMonth),
        Kind::DayTimeInterval(_) => DataType::Duration(TimeUnit::Microsecond),
        Kind::Array(a) => {
            let element = a.element_type.as_deref().ok_or_else(|| invalid("an array type without element type"))?;
            DataType::List(Arc::new(Field::new("element", from_spark(element)?, a.contains_null)))
        }
        Kind::Struct(s) => DataType::Struct(
            s.fields
                .iter()
                .map(|f| {
                    let t = f.data_type.as_ref().ok_or_else(|| invalid("a struct field without type"))?;
                    Ok(Field::new(&f.name, from_spark(t)?, f.nullable))
                })
                .collect::<Result<Vec<_>>>()?
                .into(),
        ),
        Kind::Map(m) => {
            let key = m.key_type.as_deref().ok_or_else(|| invalid("a map type without key type"))?;
            let value = m.value_type.as_deref().ok_or_else(|| invalid("a map type without value type"))?;
            let entries = Field::new(
                "entries",
                DataType::Struct(
                    vec![Field::new("key", from_spark(key)?, false), Field::new("value", from_spark(value)?, true)]
                        .into(),
                ),
                false,
            );
            DataType::Map(Arc::new(entries), false)
        }
        Kind::Unparsed(u) => parse_type_name(&u.data_type_string)?,
    })
}

fn decimal(precision: i32, scale: i32) -> Result<DataType> {
    let p = u8::try_from(precision).ok().filter(|p| (1..=38).contains(p));
    let s = i8::try_from(scale).ok();
    match (p, s) {
        (Some(p), Some(s)) if i32::from(s) <= precision => Ok(DataType::Decimal128(p, s)),
        _ => Err(IgnisError::Plan(format!("decimal({precision},{scale}) is not a valid decimal type"))),
    }
}

fn invalid(what: &str) -> IgnisError {
    IgnisError::Plan(format!("invalid Spark Connect plan: {what}"))
}

/// A Spark type name (`int`, `bigint`, `string`, `decimal(10,2)`,
/// `array<int>`) as an Arrow type.
pub fn parse_type_name(name: &str) -> Result<DataType> {
    let lower = name.trim().to_ascii_lowercase();
    if let Some(inner) = lower.strip_prefix("array<").and_then(|s| s.strip_suffix('>')) {
        return Ok(DataType::List(Arc::new(Field::new("element", parse_type_name(inner)?, true))));
    }
    if let Some(args) = lower.strip_prefix("decimal(").and_then(|s| s.strip_suffix(')')) {
        let (p, s) = args.split_once(',').unwrap_or((args, "0"));
        let parse = |x: &str| x.trim().parse::<i32>().map_err(|_| unknown_type(name));
        return decimal(parse(p)?, parse(s)?);
    }
    if lower.starts_with("varchar(") || lower.starts_with("char(") {
        return Ok(DataType::Utf8);
    }
    Ok(match lower.as_str() {
        "void" | "null" => DataType::Null,
        "boolean" | "bool" => DataType::Boolean,
        "byte" | "tinyint" => DataType::Int8,
        "short" | "smallint" => DataType::Int16,
        "int" | "integer" => DataType::Int32,
        "long" | "bigint" => DataType::Int64,
        "float" | "real" => DataType::Float32,
        "double" => DataType::Float64,
        "decimal" => DataType::Decimal128(10, 0),
        "string" => DataType::Utf8,
        "binary" => DataType::Binary,
        "date" => DataType::Date32,
        "timestamp" | "timestamp_ltz" => DataType::Timestamp(TimeUnit::Microsecond, Some(SESSION_TIME_ZONE.into())),
        "timestamp_ntz" => DataType::Timestamp(TimeUnit::Microsecond, None),
        _ => return Err(unknown_type(name)),
    })
}

fn unknown_type(name: &str) -> IgnisError {
    IgnisError::Plan(format!(
        "unsupported data type \"{name}\": Ignis knows boolean, tinyint, smallint, int, bigint, float, double, decimal(p,s), string, binary, date, timestamp, timestamp_ntz and array<...>"
    ))
}

/// A schema string as pyspark sends it: Spark's JSON `StructType`, or a DDL
/// column list (`id INT, name STRING`). `None` for a DDL list: the caller
/// gives that to DataFusion's parser.
pub fn parse_json_schema(text: &str) -> Result<Option<Schema>> {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else { return Ok(None) };
    let t = json_type(&value)?;
    match t {
        DataType::Struct(fields) => Ok(Some(Schema::new(fields))),
        other => Err(IgnisError::Plan(format!("a schema must be a struct type, not {other}"))),
    }
}

fn json_type(value: &serde_json::Value) -> Result<DataType> {
    use serde_json::Value;
    match value {
        Value::String(name) => parse_type_name(name),
        Value::Object(o) => match o.get("type").and_then(Value::as_str) {
            Some("struct") => {
                let fields =
                    o.get("fields").and_then(Value::as_array).ok_or_else(|| invalid("a struct without fields"))?;
                let fields = fields
                    .iter()
                    .map(|f| {
                        let name =
                            f.get("name").and_then(Value::as_str).ok_or_else(|| invalid("a field without name"))?;
                        let t = json_type(f.get("type").unwrap_or(&Value::Null))?;
                        let nullable = f.get("nullable").and_then(Value::as_bool).unwrap_or(true);
                        Ok(Field::new(name, t, nullable))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(DataType::Struct(fields.into()))
            }
            Some("array") => {
                let element = json_type(o.get("elementType").unwrap_or(&Value::Null))?;
                let nullable = o.get("containsNull").and_then(Value::as_bool).unwrap_or(true);
                Ok(DataType::List(Arc::new(Field::new("element", element, nullable))))
            }
            _ => Err(invalid("an unknown JSON data type")),
        },
        _ => Err(invalid("an unknown JSON data type")),
    }
}

/// An Arrow type by its SQL name, as Spark writes it in column names
/// (`CAST(x AS BIGINT)`) and as DataFusion reads it in a column list.
pub fn sql_name(t: &DataType) -> String {
    match t {
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::Float32 => "FLOAT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "STRING".into(),
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Binary => "BINARY".into(),
        DataType::Date32 => "DATE".into(),
        DataType::Timestamp(_, _) => "TIMESTAMP".into(),
        DataType::Decimal128(p, s) => format!("DECIMAL({p},{s})"),
        other => other.to_string().to_uppercase(),
    }
}

/// A literal from the wire as a DataFusion value.
pub fn literal(lit: &Literal) -> Result<ScalarValue> {
    let Some(t) = &lit.literal_type else {
        // A kind this server's protocol subset does not know.
        return Err(IgnisError::Plan("[UNSUPPORTED_FEATURE] a literal of a type Ignis does not take yet".into()));
    };
    Ok(match t {
        LiteralType::Null(t) => ScalarValue::try_from(&from_spark(t)?)?,
        LiteralType::Binary(b) => ScalarValue::Binary(Some(b.clone())),
        LiteralType::Boolean(b) => ScalarValue::Boolean(Some(*b)),
        LiteralType::Byte(v) => ScalarValue::Int8(Some(*v as i8)),
        LiteralType::Short(v) => ScalarValue::Int16(Some(*v as i16)),
        LiteralType::Integer(v) => ScalarValue::Int32(Some(*v)),
        LiteralType::Long(v) => ScalarValue::Int64(Some(*v)),
        LiteralType::Float(v) => ScalarValue::Float32(Some(*v)),
        LiteralType::Double(v) => ScalarValue::Float64(Some(*v)),
        LiteralType::Decimal(d) => decimal_literal(d)?,
        LiteralType::String(s) => ScalarValue::Utf8(Some(s.clone())),
        LiteralType::Date(d) => ScalarValue::Date32(Some(*d)),
        LiteralType::Timestamp(t) => ScalarValue::TimestampMicrosecond(Some(*t), Some(SESSION_TIME_ZONE.into())),
        LiteralType::TimestampNtz(t) => ScalarValue::TimestampMicrosecond(Some(*t), None),
        LiteralType::CalendarInterval(i) => ScalarValue::IntervalMonthDayNano(Some(
            datafusion::arrow::datatypes::IntervalMonthDayNano::new(i.months, i.days, i.microseconds * 1000),
        )),
        LiteralType::YearMonthInterval(m) => ScalarValue::IntervalYearMonth(Some(*m)),
        LiteralType::DayTimeInterval(us) => ScalarValue::DurationMicrosecond(Some(*us)),
        LiteralType::Array(a) => {
            let values = a.elements.iter().map(literal).collect::<Result<Vec<_>>>()?;
            let element = match &a.element_type {
                Some(t) => from_spark(t)?,
                None => values.first().map(ScalarValue::data_type).unwrap_or(DataType::Null),
            };
            ScalarValue::List(ScalarValue::new_list_nullable(&values, &element))
        }
        LiteralType::Struct(st) => {
            let values = st.elements.iter().map(literal).collect::<Result<Vec<_>>>()?;
            let names: Vec<String> = match st.struct_type.as_ref().and_then(|t| t.kind.as_ref()) {
                Some(Kind::Struct(s)) => s.fields.iter().map(|f| f.name.clone()).collect(),
                _ => (1..=values.len()).map(|i| format!("col{i}")).collect(),
            };
            if names.len() != values.len() {
                return Err(invalid("a struct literal whose type and values differ in length"));
            }
            let mut builder = datafusion::common::scalar::ScalarStructBuilder::new();
            for (name, value) in names.iter().zip(values) {
                builder = builder.with_scalar(Field::new(name, value.data_type(), true), value);
            }
            builder.build()?
        }
        LiteralType::Map(m) => map_literal(m)?,
        LiteralType::Time(t) => ScalarValue::Time64Nanosecond(Some(t.nano)),
    })
}

/// A map literal as a one-row Arrow map.
fn map_literal(m: &sc::expression::literal::Map) -> Result<ScalarValue> {
    use datafusion::arrow::array::{MapArray, StructArray};
    use datafusion::arrow::buffer::OffsetBuffer;
    if m.keys.len() != m.values.len() {
        return Err(invalid("a map literal with more keys than values, or fewer"));
    }
    let keys = m.keys.iter().map(literal).collect::<Result<Vec<_>>>()?;
    let values = m.values.iter().map(literal).collect::<Result<Vec<_>>>()?;
    let key_type = match &m.key_type {
        Some(t) => from_spark(t)?,
        None => keys.first().map(ScalarValue::data_type).unwrap_or(DataType::Utf8),
    };
    let value_type = match &m.value_type {
        Some(t) => from_spark(t)?,
        None => values.first().map(ScalarValue::data_type).unwrap_or(DataType::Utf8),
    };
    let key_array = if keys.is_empty() {
        datafusion::arrow::array::new_empty_array(&key_type)
    } else {
        ScalarValue::iter_to_array(keys)?
    };
    let value_array = if values.is_empty() {
        datafusion::arrow::array::new_empty_array(&value_type)
    } else {
        ScalarValue::iter_to_array(values)?
    };
    let fields = Fields::from(vec![
        Field::new("key", key_array.data_type().clone(), false),
        Field::new("value", value_array.data_type().clone(), true),
    ]);
    let len = key_array.len();
    let entries = StructArray::try_new(fields.clone(), vec![key_array, value_array], None)?;
    let field = Arc::new(Field::new("entries", DataType::Struct(fields), false));
    let map = MapArray::try_new(field, OffsetBuffer::from_lengths([len]), entries, None, false)?;
    Ok(ScalarValue::Map(Arc::new(map)))
}

fn decimal_literal(d: &sc::expression::literal::Decimal) -> Result<ScalarValue> {
    let text = d.value.trim();
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let scale = d.scale.unwrap_or(frac.len() as i32);
    let digits = format!("{int}{frac}");
    let precision = d.precision.unwrap_or((digits.trim_start_matches('-').len() as i32).max(1)).clamp(1, 38);
    let unscaled: i128 =
        digits.parse().map_err(|_| IgnisError::Plan(format!("\"{}\" is not a decimal number", d.value)))?;
    let unscaled = unscaled * 10i128.pow((scale - frac.len() as i32).max(0) as u32);
    Ok(ScalarValue::Decimal128(Some(unscaled), precision as u8, scale as i8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_and_json_schemas() {
        assert_eq!(parse_type_name("decimal(10, 2)").ok(), Some(DataType::Decimal128(10, 2)));
        assert_eq!(parse_type_name("BIGINT").ok(), Some(DataType::Int64));
        assert!(parse_type_name("geometry").is_err());
        let json = r#"{"type":"struct","fields":[{"name":"a","type":"integer","nullable":false,"metadata":{}}]}"#;
        let schema = parse_json_schema(json).ok().flatten();
        assert_eq!(schema.map(|s| s.field(0).data_type().clone()), Some(DataType::Int32));
        assert!(matches!(parse_json_schema("a INT, b STRING"), Ok(None)));
    }
}
