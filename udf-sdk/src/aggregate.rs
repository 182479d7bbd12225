//! Aggregates: a type that folds rows into a state, merges partial states
//! (from other partitions, as bytes) and produces one value per group.

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};

use crate::values::{Arg, Ret};
use crate::{Error, Volatility, ipc};

/// A user-defined aggregate. Mark the `impl` with `#[ignis_udf::aggregate]`
/// and list the type in `export!`.
///
/// ```ignore
/// #[derive(Default)]
/// struct GeoMean { log_sum: f64, count: u64 }
///
/// #[ignis_udf::aggregate]
/// impl ignis_udf::Aggregate for GeoMean {
///     const NAME: &'static str = "geo_mean";
///     type Args = (f64,);
///     type Output = Option<f64>;
///     fn update(&mut self, (x,): (f64,)) { self.log_sum += x.ln(); self.count += 1; }
///     fn merge(&mut self, other: Self) { self.log_sum += other.log_sum; self.count += other.count; }
///     fn finish(&self) -> Option<f64> { (self.count > 0).then(|| (self.log_sum / self.count as f64).exp()) }
///     fn to_state(&self) -> Vec<u8> { ... }
///     fn from_state(bytes: &[u8]) -> Result<Self, String> { ... }
/// }
/// ```
pub trait Aggregate: Default + Sized + 'static {
    /// The SQL name.
    const NAME: &'static str;
    /// One line for users.
    const DESCRIPTION: &'static str = "";
    const VOLATILITY: Volatility = Volatility::Immutable;
    /// The arguments, as a tuple of owned types: `(f64,)`, `(String, i64)`;
    /// rows where a non-`Option` argument is null are skipped, as SQL aggregates do.
    type Args: ArgTuple;
    type Output: Ret;
    fn update(&mut self, args: Self::Args);
    fn merge(&mut self, other: Self);
    fn finish(&self) -> Self::Output;
    /// The partial state as bytes, to move between executors.
    fn to_state(&self) -> Vec<u8>;
    fn from_state(bytes: &[u8]) -> Result<Self, String>;
}

/// A tuple of owned argument types.
pub trait ArgTuple: Sized {
    fn data_types() -> Vec<DataType>;
    /// Calls `f` with each row whose arguments are all present.
    fn for_each_row(columns: &[ArrayRef], rows: usize, f: impl FnMut(Self)) -> Result<(), Error>;
}

macro_rules! arg_tuple {
    ($($t:ident $c:ident $v:ident $i:tt),+) => {
        impl<$($t: for<'a> Arg<'a>),+> ArgTuple for ($($t,)+) {
            fn data_types() -> Vec<DataType> {
                vec![$(<$t as Arg<'static>>::data_type()),+]
            }

            fn for_each_row(columns: &[ArrayRef], rows: usize, mut f: impl FnMut(Self)) -> Result<(), Error> {
                let expected = [$($i),+].len();
                if columns.len() != expected {
                    return Err(Error::InvalidArguments(format!("expected {expected} argument(s), got {}", columns.len())));
                }
                $(let $c = <$t as Arg<'_>>::column(&columns[$i])?;)+
                for row in 0..rows {
                    if let ($(Some($v),)+) = ($(<$t as Arg<'_>>::value(&$c, row),)+) {
                        f(($($v,)+));
                    }
                }
                Ok(())
            }
        }
    };
}

arg_tuple!(A ca va 0);
arg_tuple!(A ca va 0, B cb vb 1);
arg_tuple!(A ca va 0, B cb vb 1, C cc vc 2);
arg_tuple!(A ca va 0, B cb vb 1, C cc vc 2, D cd vd 3);

/// An aggregate as the export machinery sees it.
#[derive(Debug)]
pub struct AggregateDef {
    pub name: &'static str,
    pub description: &'static str,
    pub volatility: Volatility,
    pub arguments: fn() -> Vec<DataType>,
    pub returns: fn() -> DataType,
    pub create: fn() -> Box<dyn DynAggregate>,
}

impl AggregateDef {
    pub const fn of<A: Aggregate>() -> AggregateDef {
        AggregateDef {
            name: A::NAME,
            description: A::DESCRIPTION,
            volatility: A::VOLATILITY,
            arguments: A::Args::data_types,
            returns: <A::Output as Ret>::data_type,
            create: || Box::new(A::default()),
        }
    }
}

/// An aggregate's running state behind an object-safe interface.
pub trait DynAggregate {
    fn update(&mut self, args: &[u8]) -> Result<(), Error>;
    fn state(&self) -> Vec<u8>;
    fn merge(&mut self, state: &[u8]) -> Result<(), Error>;
    fn evaluate(&self) -> Result<Vec<u8>, Error>;
}

impl<A: Aggregate> DynAggregate for A {
    fn update(&mut self, args: &[u8]) -> Result<(), Error> {
        let batch = ipc::read_batch(args)?;
        A::Args::for_each_row(batch.columns(), batch.num_rows(), |row| Aggregate::update(self, row))
    }

    fn state(&self) -> Vec<u8> {
        self.to_state()
    }

    fn merge(&mut self, state: &[u8]) -> Result<(), Error> {
        let other = A::from_state(state).map_err(|e| Error::InvalidData(format!("{}: bad state: {e}", A::NAME)))?;
        Aggregate::merge(self, other);
        Ok(())
    }

    fn evaluate(&self) -> Result<Vec<u8>, Error> {
        let mut builder = <A::Output as Ret>::builder(1);
        <A::Output as Ret>::append(&mut builder, self.finish())
            .map_err(|e| Error::Failed(format!("{} failed: {e}", A::NAME)))?;
        let column = <A::Output as Ret>::finish(builder);
        let schema = Schema::new(vec![Field::new(A::NAME, column.data_type().clone(), true)]);
        ipc::write_batch(&RecordBatch::try_new(Arc::new(schema), vec![column])?)
    }
}
