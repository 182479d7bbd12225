//! What the `export!` macro expands to call. Not a public API.

use std::cell::RefCell;
use std::marker::PhantomData;

use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, Schema, TimeUnit};

use crate::bindings::exports::ignis::udf::{aggregate, scalar, transform};
use crate::bindings::ignis::udf::types::{
    self as wit, DataType as WitType, FunctionInfo, FunctionKind, Signature, UdfError,
};
use crate::{DynAggregate, Error, Function, Volatility, ipc};

/// The functions a component exports; implemented by `export!`.
pub trait Table: 'static {
    const FUNCTIONS: &'static [Function];
}

/// The component: implements the world's exports over a [`Table`].
pub struct Component<T: Table>(PhantomData<T>);

fn find(functions: &[Function], name: &str) -> Option<Function> {
    functions.iter().copied().find(|f| f.name() == name)
}

fn wit_volatility(v: Volatility) -> wit::Volatility {
    match v {
        Volatility::Immutable => wit::Volatility::Immutable,
        Volatility::Stable => wit::Volatility::Stable,
        Volatility::Volatile => wit::Volatility::Volatile,
    }
}

pub fn describe(functions: &[Function]) -> Vec<FunctionInfo> {
    functions
        .iter()
        .map(|f| match f {
            Function::Scalar(def) => FunctionInfo {
                name: def.name.to_owned(),
                kind: FunctionKind::Scalar(Signature {
                    arguments: (def.arguments)().iter().map(wit_type).collect(),
                    returns: wit_type(&(def.returns)()),
                }),
                volatility: wit_volatility(def.volatility),
                description: def.description.to_owned(),
            },
            Function::Aggregate(def) => FunctionInfo {
                name: def.name.to_owned(),
                kind: FunctionKind::Aggregate(Signature {
                    arguments: (def.arguments)().iter().map(wit_type).collect(),
                    returns: wit_type(&(def.returns)()),
                }),
                volatility: wit_volatility(def.volatility),
                description: def.description.to_owned(),
            },
            Function::Transform(def) => FunctionInfo {
                name: def.name.to_owned(),
                kind: FunctionKind::Transform,
                volatility: wit::Volatility::Immutable,
                description: def.description.to_owned(),
            },
        })
        .collect()
}

/// The WIT form of the Arrow types the SDK's `Arg` and `Ret` produce.
pub fn wit_type(t: &DataType) -> WitType {
    match t {
        DataType::Boolean => WitType::Boolean,
        DataType::Int8 => WitType::Int8,
        DataType::Int16 => WitType::Int16,
        DataType::Int32 => WitType::Int32,
        DataType::Int64 => WitType::Int64,
        DataType::UInt8 => WitType::Uint8,
        DataType::UInt16 => WitType::Uint16,
        DataType::UInt32 => WitType::Uint32,
        DataType::UInt64 => WitType::Uint64,
        DataType::Float32 => WitType::Float32,
        DataType::Float64 => WitType::Float64,
        DataType::Binary => WitType::Binary,
        DataType::Date32 => WitType::Date32,
        DataType::Timestamp(unit, tz) => WitType::Timestamp(wit::TimestampType {
            unit: match unit {
                TimeUnit::Second => wit::TimeUnit::Second,
                TimeUnit::Millisecond => wit::TimeUnit::Millisecond,
                TimeUnit::Microsecond => wit::TimeUnit::Microsecond,
                TimeUnit::Nanosecond => wit::TimeUnit::Nanosecond,
            },
            timezone: tz.as_ref().map(|tz| tz.to_string()),
        }),
        DataType::Decimal128(precision, scale) => {
            WitType::Decimal128(wit::DecimalType { precision: *precision, scale: *scale })
        }
        // `Arg`/`Ret` only produce the types above; strings are the rest.
        _ => WitType::Utf8,
    }
}

pub fn call_scalar(functions: &[Function], name: &str, args: &[u8]) -> Result<Vec<u8>, Error> {
    let Some(Function::Scalar(def)) = find(functions, name) else {
        return Err(Error::UnknownFunction(format!("this component has no scalar function named '{name}'")));
    };
    let batch = ipc::read_batch(args)?;
    let expected = (def.arguments)();
    if batch.num_columns() != expected.len() {
        return Err(Error::InvalidArguments(format!(
            "{name} takes {} argument(s), got {}",
            expected.len(),
            batch.num_columns()
        )));
    }
    let rows = batch.num_rows();
    let column = (def.call)(batch.columns(), rows)?;
    if column.len() != rows {
        return Err(Error::Failed(format!("{name} returned {} values for {rows} rows", column.len())));
    }
    let schema = Schema::new(vec![Field::new(name, column.data_type().clone(), true)]);
    let out = RecordBatch::try_new(std::sync::Arc::new(schema), vec![column])?;
    ipc::write_batch(&out)
}

fn find_transform(functions: &[Function], name: &str) -> Result<&'static crate::TransformDef, Error> {
    match find(functions, name) {
        Some(Function::Transform(def)) => Ok(def),
        _ => Err(Error::UnknownFunction(format!("this component has no transform named '{name}'"))),
    }
}

/// Run transform `name` on the batch in `input` (IPC); the result as IPC.
pub fn call_transform(functions: &[Function], name: &str, input: &[u8]) -> Result<Vec<u8>, Error> {
    let def = find_transform(functions, name)?;
    let batch = ipc::read_batch(input)?;
    let out = (def.call)(batch).map_err(|e| Error::Failed(format!("{name} failed: {e}")))?;
    ipc::write_batch(&out)
}

/// The schema transform `name` returns for input of this schema (an IPC
/// stream with no batches): its output for an empty batch.
pub fn transform_output_schema(functions: &[Function], name: &str, input_schema: &[u8]) -> Result<Vec<u8>, Error> {
    let def = find_transform(functions, name)?;
    let empty = ipc::read_batch(input_schema)?;
    let out = (def.call)(RecordBatch::new_empty(empty.schema()))
        .map_err(|e| Error::Failed(format!("{name} failed on an empty batch (asked for its output columns): {e}")))?;
    ipc::write_batch(&RecordBatch::new_empty(out.schema()))
}

impl<T: Table> crate::bindings::Guest for Component<T> {
    fn describe() -> Vec<FunctionInfo> {
        describe(T::FUNCTIONS)
    }
}

impl<T: Table> scalar::Guest for Component<T> {
    fn call(name: String, args: Vec<u8>) -> Result<Vec<u8>, UdfError> {
        call_scalar(T::FUNCTIONS, &name, &args).map_err(UdfError::from)
    }
}

impl<T: Table> transform::Guest for Component<T> {
    fn output_schema(name: String, input_schema: Vec<u8>) -> Result<Vec<u8>, UdfError> {
        transform_output_schema(T::FUNCTIONS, &name, &input_schema).map_err(UdfError::from)
    }

    fn call(name: String, batch: Vec<u8>) -> Result<Vec<u8>, UdfError> {
        call_transform(T::FUNCTIONS, &name, &batch).map_err(UdfError::from)
    }
}

/// An aggregate's running state inside the component: one resource per group.
pub struct Accumulator<T: Table> {
    state: RefCell<Box<dyn DynAggregate>>,
    table: PhantomData<T>,
}

impl<T: Table> aggregate::Guest for Component<T> {
    type Accumulator = Accumulator<T>;
}

impl<T: Table> aggregate::GuestAccumulator for Accumulator<T> {
    fn create(name: String) -> Result<aggregate::Accumulator, UdfError> {
        let Some(Function::Aggregate(def)) = find(T::FUNCTIONS, &name) else {
            return Err(UdfError::UnknownFunction(format!("this component has no aggregate named '{name}'")));
        };
        Ok(aggregate::Accumulator::new(Accumulator::<T> { state: RefCell::new((def.create)()), table: PhantomData }))
    }

    fn update(&self, args: Vec<u8>) -> Result<(), UdfError> {
        self.state.borrow_mut().update(&args).map_err(UdfError::from)
    }

    fn state(&self) -> Result<Vec<u8>, UdfError> {
        Ok(self.state.borrow().state())
    }

    fn merge(&self, states: Vec<Vec<u8>>) -> Result<(), UdfError> {
        let mut state = self.state.borrow_mut();
        for s in &states {
            state.merge(s).map_err(UdfError::from)?;
        }
        Ok(())
    }

    fn evaluate(&self) -> Result<Vec<u8>, UdfError> {
        self.state.borrow().evaluate().map_err(UdfError::from)
    }
}
