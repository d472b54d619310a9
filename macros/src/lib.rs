//! Procedural macros of [shoal](https://docs.rs/shoal): `#[derive(Metrics)]`,
//! `#[derive(LabelSet)]` and `#[timed]`.
//!
//! Use them through the `shoal` crate (`shoal::Metrics`, `shoal::LabelSet`,
//! `shoal::timed`): the code they generate refers to `::shoal::__private`
//! only, so `shoal` is the one dependency a user needs.

use proc_macro::TokenStream;

mod label_set;
mod metrics_derive;
mod names;
mod timed;

/// Registers a struct of metric handles in one call.
///
/// Fields may be `shoal::Counter`, `shoal::Gauge`, `shoal::Histogram`, the
/// `metrics` crate's `Counter`, `Gauge`, `Histogram`, or a
/// `shoal::instrument::Family<L, H>` of one of them (one handle per value of
/// the label set `L`).
///
/// Attributes:
/// - on the struct, `#[metrics(prefix = "http")]`: every metric name becomes
///   `http_<name>`;
/// - on a field, `#[metric(name = "...", unit = "...", description = "...",
///   labels(key = "value", ...))]`, all optional. The name defaults to the
///   field's name, the description to the field's doc comment. Units are
///   those of `metrics::Unit` (`seconds`, `bytes`, `count`, ...).
///
/// Generates, with the struct's visibility:
/// - `fn register(shoal: &shoal::Shoal) -> Self`;
/// - `fn register_with(recorder: &dyn metrics::Recorder) -> Self` and
///   `fn register_global() -> Self` (the current `metrics` recorder: the
///   global one unless a local one is set), available when every field is a
///   `metrics` handle (or a family of them).
///
/// Each registers every field once and describes it (unit and description
/// reach `# HELP` in the Prometheus exposition).
#[proc_macro_derive(Metrics, attributes(metrics, metric))]
pub fn derive_metrics(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    metrics_derive::expand(input).unwrap_or_else(syn::Error::into_compile_error).into()
}

/// Implements `shoal::instrument::LabelSet` for a fieldless enum (one label)
/// or a struct whose fields are label sets (their labels together).
///
/// Enum attributes: `#[label(key = "...")]` (default: the enum's name in
/// snake case), `#[label(rename_all = "...")]` (`snake_case`, the default,
/// `lowercase`, `UPPERCASE`, `SCREAMING_SNAKE_CASE`, `kebab-case` or
/// `PascalCase`); variant attribute `#[label(value = "...")]`.
#[proc_macro_derive(LabelSet, attributes(label))]
pub fn derive_label_set(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    label_set::expand(input).unwrap_or_else(syn::Error::into_compile_error).into()
}

/// Times a function: counts its calls by outcome and records their duration.
///
/// - `function_calls_total{function, module, result}`: `result` is `ok`,
///   `error` (the function returned `Err`), `panic` (it unwound) or
///   `cancelled` (an `async fn` whose future was dropped unfinished);
/// - `function_duration_seconds{function, module}`: a histogram in seconds;
/// - with `#[timed(concurrency)]`, `function_calls_in_flight{function,
///   module}`: a gauge of the calls in progress;
/// - `#[timed(name = "db")]` replaces the `function` prefix of the three names
///   (`db_calls_total`, ...).
///
/// Works on free functions, methods, generic functions, `async fn`, and
/// functions returning `Result` (or an alias of it). Early returns and `?`
/// are recorded like any return.
#[proc_macro_attribute]
pub fn timed(args: TokenStream, item: TokenStream) -> TokenStream {
    timed::expand(args.into(), item.into()).unwrap_or_else(syn::Error::into_compile_error).into()
}
