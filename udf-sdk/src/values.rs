//! How Rust argument and result types map to Arrow columns.

use std::fmt::Display;
use std::sync::Arc;

use arrow_array::builder::{BinaryBuilder, BooleanBuilder, Decimal128Builder, PrimitiveBuilder, StringBuilder};
use arrow_array::types::{
    Date32Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, TimestampMicrosecondType,
    UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, BinaryArray, BooleanArray, Decimal128Array, PrimitiveArray, StringArray};
use arrow_schema::{DataType, TimeUnit};

use crate::Error;

/// Days since 1970-01-01 (Arrow `Date32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date(pub i32);

/// Microseconds since 1970-01-01T00:00:00 UTC (Arrow `Timestamp(Microsecond)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

/// A decimal of precision `P` and scale `S`: the value is `unscaled / 10^S`
/// (Arrow `Decimal128(P, S)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Decimal<const P: u8, const S: i8>(pub i128);

fn downcast<'a, T: 'static>(array: &'a ArrayRef, expected: &DataType) -> Result<&'a T, Error> {
    array
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| Error::InvalidArguments(format!("expected a {expected} column, got {}", array.data_type())))
}

/// A type a function can take as an argument.
pub trait Arg<'a>: Sized {
    /// The typed column the values are read from.
    type Column;
    fn data_type() -> DataType;
    fn column(array: &'a ArrayRef) -> Result<Self::Column, Error>;
    /// The value at `row`; `None` for a null (the row's result is then null).
    fn value(column: &Self::Column, row: usize) -> Option<Self>;
    /// The value at `row` of a column known to hold no nulls.
    fn value_nonnull(column: &Self::Column, row: usize) -> Self;
}

/// A type a function can return.
pub trait Ret {
    type Builder;
    fn data_type() -> DataType;
    fn builder(rows: usize) -> Self::Builder;
    /// Appends the value; an `Err` fails the call with its text.
    fn append(builder: &mut Self::Builder, value: Self) -> Result<(), String>;
    fn append_null(builder: &mut Self::Builder);
    fn finish(builder: Self::Builder) -> ArrayRef;
    /// The column of `value(row)` for every row in `0..rows`; on an `Err`, the
    /// row and the error's text. Types with a faster way than appending one
    /// value at a time to a builder override it.
    #[inline]
    fn collect(rows: usize, mut value: impl FnMut(usize) -> Self) -> Result<ArrayRef, (usize, String)>
    where
        Self: Sized,
    {
        let mut builder = Self::builder(rows);
        for row in 0..rows {
            Self::append(&mut builder, value(row)).map_err(|e| (row, e))?;
        }
        Ok(Self::finish(builder))
    }
}

impl<'a, T: Arg<'a>> Arg<'a> for Option<T> {
    type Column = T::Column;
    fn data_type() -> DataType {
        T::data_type()
    }
    fn column(array: &'a ArrayRef) -> Result<Self::Column, Error> {
        T::column(array)
    }
    #[inline]
    fn value(column: &Self::Column, row: usize) -> Option<Self> {
        Some(T::value(column, row))
    }
    #[inline]
    fn value_nonnull(column: &Self::Column, row: usize) -> Self {
        Some(T::value_nonnull(column, row))
    }
}

impl<T: Ret> Ret for Option<T> {
    type Builder = T::Builder;
    fn data_type() -> DataType {
        T::data_type()
    }
    fn builder(rows: usize) -> Self::Builder {
        T::builder(rows)
    }
    #[inline]
    fn append(builder: &mut Self::Builder, value: Self) -> Result<(), String> {
        match value {
            Some(v) => T::append(builder, v),
            None => {
                T::append_null(builder);
                Ok(())
            }
        }
    }
    #[inline]
    fn append_null(builder: &mut Self::Builder) {
        T::append_null(builder)
    }
    fn finish(builder: Self::Builder) -> ArrayRef {
        T::finish(builder)
    }
}

impl<T: Ret, E: Display> Ret for Result<T, E> {
    type Builder = T::Builder;
    fn data_type() -> DataType {
        T::data_type()
    }
    fn builder(rows: usize) -> Self::Builder {
        T::builder(rows)
    }
    #[inline]
    fn append(builder: &mut Self::Builder, value: Self) -> Result<(), String> {
        match value {
            Ok(v) => T::append(builder, v),
            Err(e) => Err(e.to_string()),
        }
    }
    #[inline]
    fn append_null(builder: &mut Self::Builder) {
        T::append_null(builder)
    }
    fn finish(builder: Self::Builder) -> ArrayRef {
        T::finish(builder)
    }
}

/// Arg and Ret for a Rust type held in an Arrow primitive column: the native
/// value itself, or a newtype over it (`from` wraps, `into` unwraps).
macro_rules! primitive {
    ($rust:ty, $arrow:ty, $data_type:expr) => {
        primitive!($rust, $arrow, $data_type, |v| v, |v| v);
    };
    ($rust:ty, $arrow:ty, $data_type:expr, $from:expr, $into:expr) => {
        impl<'a> Arg<'a> for $rust {
            type Column = &'a PrimitiveArray<$arrow>;
            fn data_type() -> DataType {
                $data_type
            }
            fn column(array: &'a ArrayRef) -> Result<Self::Column, Error> {
                downcast(array, &$data_type)
            }
            #[inline]
            fn value(column: &Self::Column, row: usize) -> Option<Self> {
                if column.is_null(row) { None } else { Some(($from)(column.value(row))) }
            }
            #[inline]
            fn value_nonnull(column: &Self::Column, row: usize) -> Self {
                ($from)(column.values()[row])
            }
        }

        impl Ret for $rust {
            type Builder = PrimitiveBuilder<$arrow>;
            fn data_type() -> DataType {
                $data_type
            }
            fn builder(rows: usize) -> Self::Builder {
                PrimitiveBuilder::with_capacity(rows).with_data_type($data_type)
            }
            #[inline]
            fn append(builder: &mut Self::Builder, value: Self) -> Result<(), String> {
                builder.append_value(($into)(value));
                Ok(())
            }
            #[inline]
            fn append_null(builder: &mut Self::Builder) {
                builder.append_null()
            }
            fn finish(mut builder: Self::Builder) -> ArrayRef {
                Arc::new(builder.finish())
            }
            #[inline]
            fn collect(rows: usize, mut value: impl FnMut(usize) -> Self) -> Result<ArrayRef, (usize, String)> {
                let values: Vec<_> = (0..rows).map(|row| ($into)(value(row))).collect();
                Ok(Arc::new(PrimitiveArray::<$arrow>::new(values.into(), None).with_data_type($data_type)))
            }
        }
    };
}

primitive!(i8, Int8Type, DataType::Int8);
primitive!(i16, Int16Type, DataType::Int16);
primitive!(i32, Int32Type, DataType::Int32);
primitive!(i64, Int64Type, DataType::Int64);
primitive!(u8, UInt8Type, DataType::UInt8);
primitive!(u16, UInt16Type, DataType::UInt16);
primitive!(u32, UInt32Type, DataType::UInt32);
primitive!(u64, UInt64Type, DataType::UInt64);
primitive!(f32, Float32Type, DataType::Float32);
primitive!(f64, Float64Type, DataType::Float64);
primitive!(Date, Date32Type, DataType::Date32, Date, |d: Date| d.0);
primitive!(
    Timestamp,
    TimestampMicrosecondType,
    DataType::Timestamp(TimeUnit::Microsecond, None),
    Timestamp,
    |t: Timestamp| t.0
);

impl<'a, const P: u8, const S: i8> Arg<'a> for Decimal<P, S> {
    type Column = &'a Decimal128Array;
    fn data_type() -> DataType {
        DataType::Decimal128(P, S)
    }
    fn column(array: &'a ArrayRef) -> Result<Self::Column, Error> {
        if array.data_type() != &DataType::Decimal128(P, S) {
            return Err(Error::InvalidArguments(format!(
                "expected a {} column, got {}",
                DataType::Decimal128(P, S),
                array.data_type()
            )));
        }
        downcast(array, &DataType::Decimal128(P, S))
    }
    #[inline]
    fn value(column: &Self::Column, row: usize) -> Option<Self> {
        if column.is_null(row) { None } else { Some(Decimal(column.value(row))) }
    }
    #[inline]
    fn value_nonnull(column: &Self::Column, row: usize) -> Self {
        Decimal(column.values()[row])
    }
}

impl<const P: u8, const S: i8> Ret for Decimal<P, S> {
    type Builder = Decimal128Builder;
    fn data_type() -> DataType {
        DataType::Decimal128(P, S)
    }
    fn builder(rows: usize) -> Self::Builder {
        Decimal128Builder::with_capacity(rows).with_data_type(DataType::Decimal128(P, S))
    }
    #[inline]
    fn append(builder: &mut Self::Builder, value: Self) -> Result<(), String> {
        builder.append_value(value.0);
        Ok(())
    }
    #[inline]
    fn append_null(builder: &mut Self::Builder) {
        builder.append_null()
    }
    fn finish(mut builder: Self::Builder) -> ArrayRef {
        Arc::new(builder.finish())
    }
}

/// Arg for a type read from a typed Arrow array's `value(row)`.
macro_rules! array_arg {
    ($lt:lifetime, $rust:ty, $array:ty, $data_type:expr, $value:expr) => {
        impl<$lt> Arg<$lt> for $rust {
            type Column = &$lt $array;
            fn data_type() -> DataType {
                $data_type
            }
            fn column(array: &$lt ArrayRef) -> Result<Self::Column, Error> {
                downcast(array, &$data_type)
            }
            #[inline]
            fn value(column: &Self::Column, row: usize) -> Option<Self> {
                if column.is_null(row) { None } else { Some(($value)(column.value(row))) }
            }
            #[inline]
            fn value_nonnull(column: &Self::Column, row: usize) -> Self {
                ($value)(column.value(row))
            }
        }
    };
}

array_arg!('a, bool, BooleanArray, DataType::Boolean, |v| v);
array_arg!('a, &'a str, StringArray, DataType::Utf8, |v| v);
array_arg!('a, String, StringArray, DataType::Utf8, |v: &str| v.to_owned());
array_arg!('a, &'a [u8], BinaryArray, DataType::Binary, |v| v);

/// Ret for a type an Arrow builder appends as it is.
macro_rules! builder_ret {
    ($rust:ty, $builder:ty, $data_type:expr, $new:expr) => {
        impl Ret for $rust {
            type Builder = $builder;
            fn data_type() -> DataType {
                $data_type
            }
            fn builder(rows: usize) -> Self::Builder {
                ($new)(rows)
            }
            #[inline]
            fn append(builder: &mut Self::Builder, value: Self) -> Result<(), String> {
                builder.append_value(value);
                Ok(())
            }
            #[inline]
            fn append_null(builder: &mut Self::Builder) {
                builder.append_null()
            }
            fn finish(mut builder: Self::Builder) -> ArrayRef {
                Arc::new(builder.finish())
            }
        }
    };
}

builder_ret!(bool, BooleanBuilder, DataType::Boolean, BooleanBuilder::with_capacity);
builder_ret!(String, StringBuilder, DataType::Utf8, |rows| StringBuilder::with_capacity(rows, rows * 16));
builder_ret!(Vec<u8>, BinaryBuilder, DataType::Binary, |rows| BinaryBuilder::with_capacity(rows, rows * 16));
