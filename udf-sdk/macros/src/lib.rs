//! Macros of the Ignis UDF SDK: `#[scalar]` turns a plain Rust function into
//! a UDF description plus the glue that runs it over Arrow columns,
//! `#[transform]` does the same for a function over whole batches,
//! `#[aggregate]` for an `Aggregate` impl; `export!` makes the component
//! export the listed functions.

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Expr, FnArg, Ident, ItemFn, Lit, LitStr, Meta, ReturnType, Token, Type, parse_macro_input};

/// Options of `#[scalar(name = "...", volatility = "immutable|stable|volatile")]`.
struct ScalarOptions {
    name: Option<LitStr>,
    volatility: Option<LitStr>,
}

impl Parse for ScalarOptions {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut options = ScalarOptions { name: None, volatility: None };
        for meta in Punctuated::<Meta, Token![,]>::parse_terminated(input)? {
            let Meta::NameValue(nv) = &meta else {
                return Err(syn::Error::new_spanned(meta, "expected `name = \"...\"` or `volatility = \"...\"`"));
            };
            let Expr::Lit(syn::ExprLit { lit: Lit::Str(value), .. }) = &nv.value else {
                return Err(syn::Error::new_spanned(&nv.value, "expected a string literal"));
            };
            if nv.path.is_ident("name") {
                options.name = Some(value.clone());
            } else if nv.path.is_ident("volatility") {
                match value.value().as_str() {
                    "immutable" | "stable" | "volatile" => options.volatility = Some(value.clone()),
                    _ => {
                        return Err(syn::Error::new_spanned(
                            value,
                            "volatility is one of \"immutable\", \"stable\", \"volatile\"",
                        ));
                    }
                }
            } else {
                return Err(syn::Error::new_spanned(&nv.path, "unknown option; expected `name` or `volatility`"));
            }
        }
        Ok(options)
    }
}

/// An attribute on a plain function: the function as written, followed by
/// the glue `expand` makes of it (or the compile error it reports).
fn function_attribute(
    attr: TokenStream,
    item: TokenStream,
    expand: fn(ScalarOptions, &ItemFn) -> syn::Result<proc_macro2::TokenStream>,
) -> TokenStream {
    let options = parse_macro_input!(attr as ScalarOptions);
    let function = parse_macro_input!(item as ItemFn);
    let sig = &function.sig;
    let glue = if !sig.generics.params.is_empty() || sig.asyncness.is_some() || sig.unsafety.is_some() {
        Err(syn::Error::new_spanned(sig, "a UDF is a plain function: not generic, async or unsafe"))
    } else {
        expand(options, &function)
    };
    match glue {
        Ok(glue) => quote!(#function #glue).into(),
        Err(e) => {
            let e = e.to_compile_error();
            quote!(#function #e).into()
        }
    }
}

/// The first paragraph of the function's doc comment, as one line.
fn description(f: &ItemFn) -> String {
    let mut lines = Vec::new();
    for attr in &f.attrs {
        if !attr.path().is_ident("doc") {
            continue;
        }
        if let Meta::NameValue(nv) = &attr.meta
            && let Expr::Lit(syn::ExprLit { lit: Lit::Str(s), .. }) = &nv.value
        {
            let line = s.value().trim().to_owned();
            if line.is_empty() && !lines.is_empty() {
                break;
            }
            if !line.is_empty() {
                lines.push(line);
            }
        }
    }
    lines.join(" ")
}

/// Makes a plain Rust function a scalar UDF: one call per row, arguments and
/// result converted from and to Arrow columns. A null in a non-`Option`
/// argument makes the row's result null without calling the function.
///
/// ```ignore
/// /// Price with tax, rounded to cents.
/// #[ignis_udf::scalar(volatility = "immutable")]
/// fn with_tax(price: f64, rate: Option<f64>) -> f64 { ... }
/// ```
#[proc_macro_attribute]
pub fn scalar(attr: TokenStream, item: TokenStream) -> TokenStream {
    function_attribute(attr, item, expand_scalar)
}

fn expand_scalar(options: ScalarOptions, f: &ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    let sig = &f.sig;
    let ident = &sig.ident;
    let name = options.name.map(|n| n.value()).unwrap_or_else(|| ident.to_string());
    let volatility = match options.volatility.map(|v| v.value()).as_deref() {
        Some("stable") => quote!(ignis_udf::Volatility::Stable),
        Some("volatile") => quote!(ignis_udf::Volatility::Volatile),
        _ => quote!(ignis_udf::Volatility::Immutable),
    };
    let description = description(f);
    let mut arg_types: Vec<Type> = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Typed(pat) => arg_types.push(strip_lifetimes((*pat.ty).clone())),
            FnArg::Receiver(r) => return Err(syn::Error::new_spanned(r, "a UDF cannot take self")),
        }
    }
    let ret: Type = match &sig.output {
        ReturnType::Type(_, ty) => strip_lifetimes((**ty).clone()),
        ReturnType::Default => return Err(syn::Error::new_spanned(sig, "a scalar UDF returns a value")),
    };
    let arity = arg_types.len();
    let columns: Vec<Ident> = (0..arity).map(|i| format_ident!("column{i}")).collect();
    let values: Vec<Ident> = (0..arity).map(|i| format_ident!("value{i}")).collect();
    let indices: Vec<syn::Index> = (0..arity).map(syn::Index::from).collect();
    let module = format_ident!("__ignis_udf_{}", ident);
    let row_call = if arity == 0 {
        quote!(<#ret as ignis_udf::Ret>::append(&mut builder, super::#ident()))
    } else {
        quote! {
            match (#(<#arg_types as ignis_udf::Arg<'_>>::value(&#columns, row),)*) {
                (#(Some(#values),)*) => <#ret as ignis_udf::Ret>::append(&mut builder, super::#ident(#(#values),*)),
                _ => {
                    <#ret as ignis_udf::Ret>::append_null(&mut builder);
                    Ok(())
                }
            }
        }
    };
    Ok(quote! {
        #[doc(hidden)]
        #[allow(non_snake_case, unused_imports)]
        pub mod #module {
            use super::*;

            pub const FUNCTION: ignis_udf::Function = ignis_udf::Function::Scalar(&ignis_udf::ScalarDef {
                name: #name,
                description: #description,
                volatility: #volatility,
                arguments,
                returns,
                call,
            });

            fn arguments() -> Vec<ignis_udf::arrow_schema::DataType> {
                vec![#(<#arg_types as ignis_udf::Arg<'static>>::data_type()),*]
            }

            fn returns() -> ignis_udf::arrow_schema::DataType {
                <#ret as ignis_udf::Ret>::data_type()
            }

            fn call(
                args: &[ignis_udf::arrow_array::ArrayRef],
                rows: usize,
            ) -> Result<ignis_udf::arrow_array::ArrayRef, ignis_udf::Error> {
                #(let #columns = <#arg_types as ignis_udf::Arg<'_>>::column(&args[#indices])
                    .map_err(|e| ignis_udf::Error::InvalidArguments(format!("{} argument {}: {e}", #name, #indices + 1)))?;)*
                // No nulls anywhere (the usual case): no per-row null checks,
                // and the result type may build its column in one pass.
                if args.iter().all(|a| a.null_count() == 0 && a.len() >= rows) {
                    return <#ret as ignis_udf::Ret>::collect(rows, |row| {
                        super::#ident(#(<#arg_types as ignis_udf::Arg<'_>>::value_nonnull(&#columns, row)),*)
                    })
                    .map_err(|(row, e)| ignis_udf::Error::Failed(format!("{} failed on row {row} of the batch: {e}", #name)));
                }
                let mut builder = <#ret as ignis_udf::Ret>::builder(rows);
                for row in 0..rows {
                    let appended: Result<(), String> = #row_call;
                    appended.map_err(|e| ignis_udf::Error::Failed(format!("{} failed on row {row} of the batch: {e}", #name)))?;
                }
                Ok(<#ret as ignis_udf::Ret>::finish(builder))
            }
        }
    })
}

/// `&'a str` -> `&str`: the glue names types with inferred lifetimes.
fn strip_lifetimes(ty: Type) -> Type {
    match ty {
        Type::Reference(mut r) => {
            r.lifetime = None;
            r.elem = Box::new(strip_lifetimes(*r.elem));
            Type::Reference(r)
        }
        other => other,
    }
}

/// Makes a function over whole record batches a transform, for `map_batches`
/// steps: `fn(RecordBatch) -> RecordBatch` or `-> Result<RecordBatch, E>`.
/// Its output columns must depend only on its input columns: Ignis calls it
/// on an empty batch to learn them when planning.
///
/// ```ignore
/// /// Adds a `band` column.
/// #[ignis_udf::transform]
/// fn bands(batch: RecordBatch) -> Result<RecordBatch, ArrowError> { ... }
/// ```
#[proc_macro_attribute]
pub fn transform(attr: TokenStream, item: TokenStream) -> TokenStream {
    function_attribute(attr, item, expand_transform)
}

fn expand_transform(options: ScalarOptions, f: &ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    let sig = &f.sig;
    if let Some(v) = options.volatility {
        return Err(syn::Error::new_spanned(v, "a transform takes no volatility (it runs once per batch)"));
    }
    if sig.inputs.len() != 1 || matches!(sig.output, ReturnType::Default) {
        return Err(syn::Error::new_spanned(
            sig,
            "a transform takes one RecordBatch and returns a RecordBatch or Result<RecordBatch, E>",
        ));
    }
    let ident = &sig.ident;
    let name = options.name.map(|n| n.value()).unwrap_or_else(|| ident.to_string());
    let description = description(f);
    let module = format_ident!("__ignis_udf_{}", ident);
    Ok(quote! {
        #[doc(hidden)]
        #[allow(non_snake_case, unused_imports)]
        pub mod #module {
            use super::*;

            pub const FUNCTION: ignis_udf::Function =
                ignis_udf::Function::Transform(&ignis_udf::TransformDef { name: #name, description: #description, call });

            fn call(
                batch: ignis_udf::arrow_array::RecordBatch,
            ) -> Result<ignis_udf::arrow_array::RecordBatch, String> {
                ignis_udf::TransformOutput::into_batch(super::#ident(batch))
            }
        }
    })
}

/// Makes an `impl ignis_udf::Aggregate for T` exportable: list `T` in `export!`.
#[proc_macro_attribute]
pub fn aggregate(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(Span::call_site(), "#[aggregate] takes no options; set NAME etc. in the impl")
            .to_compile_error()
            .into();
    }
    let block = parse_macro_input!(item as syn::ItemImpl);
    let Type::Path(self_ty) = &*block.self_ty else {
        return syn::Error::new_spanned(&block.self_ty, "#[aggregate] goes on `impl Aggregate for YourType`")
            .to_compile_error()
            .into();
    };
    let Some(last) = self_ty.path.segments.last() else {
        return syn::Error::new_spanned(&block.self_ty, "expected a type name").to_compile_error().into();
    };
    let ty = &block.self_ty;
    let module = format_ident!("__ignis_udf_{}", last.ident);
    quote! {
        #block

        #[doc(hidden)]
        #[allow(non_snake_case, unused_imports)]
        pub mod #module {
            use super::*;
            const DEF: ignis_udf::AggregateDef = ignis_udf::AggregateDef::of::<#ty>();
            pub const FUNCTION: ignis_udf::Function = ignis_udf::Function::Aggregate(&DEF);
        }
    }
    .into()
}

struct ExportList(Punctuated<Ident, Token![,]>);

impl Parse for ExportList {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        Ok(ExportList(Punctuated::parse_terminated(input)?))
    }
}

/// Exports the listed UDFs (functions marked `#[scalar]` or `#[transform]`,
/// types whose `Aggregate` impl is marked `#[aggregate]`) as this crate's component. Call it once, at the crate root: `ignis_udf::export!(normalize, with_tax);`
#[proc_macro]
pub fn export(input: TokenStream) -> TokenStream {
    let list = parse_macro_input!(input as ExportList);
    if list.0.is_empty() {
        return syn::Error::new(Span::call_site(), "export! needs at least one function").to_compile_error().into();
    }
    let modules = list.0.iter().map(|ident| format_ident!("__ignis_udf_{}", ident));
    quote! {
        #[doc(hidden)]
        pub struct __IgnisUdfTable;

        impl ignis_udf::__private::Table for __IgnisUdfTable {
            const FUNCTIONS: &'static [ignis_udf::Function] = &[#(#modules::FUNCTION),*];
        }

        #[doc(hidden)]
        type __IgnisUdfComponent = ignis_udf::__private::Component<__IgnisUdfTable>;

        ignis_udf::bindings::__export_udf_world!(__IgnisUdfComponent with_types_in ignis_udf::bindings);
    }
    .into()
}
