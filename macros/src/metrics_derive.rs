//! `#[derive(Metrics)]`.

use crate::names::{doc_text, is_label_key, is_metric_name, UNITS};
use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, LitStr};

struct FieldMetric {
    ident: syn::Ident,
    ty: syn::Type,
    name: String,
    unit: Option<String>,
    description: Option<String>,
    labels: Vec<(String, String)>,
}

pub fn expand(input: DeriveInput) -> syn::Result<TokenStream> {
    let fields = match &input.data {
        Data::Struct(s) => match &s.fields {
            Fields::Named(named) => &named.named,
            _ => {
                return Err(syn::Error::new(
                    fields_span(&s.fields, &input),
                    "#[derive(Metrics)] needs a struct with named fields, one per metric",
                ))
            }
        },
        Data::Enum(e) => {
            return Err(syn::Error::new(e.enum_token.span, "#[derive(Metrics)] needs a struct with named fields, one per metric"))
        }
        Data::Union(u) => {
            return Err(syn::Error::new(u.union_token.span, "#[derive(Metrics)] needs a struct with named fields, one per metric"))
        }
    };
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(&input.generics, "#[derive(Metrics)] does not support generic structs"));
    }

    let prefix = struct_prefix(&input)?;
    let mut metrics: Vec<FieldMetric> = Vec::new();
    for field in fields {
        let ident = field.ident.clone().expect("named field");
        let m = field_metric(field, &ident, prefix.as_deref())?;
        let mut sorted = m.labels.clone();
        sorted.sort();
        if let Some(prev) = metrics.iter().find(|p| {
            let mut l = p.labels.clone();
            l.sort();
            p.name == m.name && l == sorted
        }) {
            return Err(syn::Error::new(
                ident.span(),
                format!(
                    "metric `{}` with these labels is already registered by field `{}`; give this field another name or other labels",
                    m.name, prev.ident
                ),
            ));
        }
        metrics.push(m);
    }

    let ident = &input.ident;
    let vis = &input.vis;

    // Describe each metric name once, with the first unit and description
    // given for it.
    let mut described: Vec<&str> = Vec::new();
    let mut describes = Vec::new();
    for m in &metrics {
        if described.contains(&m.name.as_str()) {
            continue;
        }
        let same: Vec<&FieldMetric> = metrics.iter().filter(|o| o.name == m.name).collect();
        let unit = same.iter().find_map(|o| o.unit.clone());
        let description = same.iter().find_map(|o| o.description.clone());
        if unit.is_none() && description.is_none() {
            continue;
        }
        described.push(&m.name);
        let ty = &m.ty;
        let name = &m.name;
        let unit = match unit {
            Some(u) => quote!(::core::option::Option::Some(#u)),
            None => quote!(::core::option::Option::None),
        };
        let description = description.unwrap_or_default();
        describes.push(quote_spanned! {ty.span()=>
            ::shoal::__private::describe(__recorder, <#ty as ::shoal::__private::Metric>::KIND, #name, #unit, #description);
        });
    }

    let shoal_inits = metrics.iter().map(|m| {
        let (field, ty, name) = (&m.ident, &m.ty, &m.name);
        let labels = labels_tokens(&m.labels);
        quote_spanned! {ty.span()=>
            #field: <#ty as ::shoal::__private::Metric>::register(shoal, #name, #labels)
        }
    });
    let recorder_inits = metrics.iter().map(|m| {
        let (field, ty, name) = (&m.ident, &m.ty, &m.name);
        let labels = labels_tokens(&m.labels);
        quote_spanned! {ty.span()=>
            #field: <#ty as ::shoal::__private::RecorderMetric>::register_with(recorder, #name, #labels)
        }
    });
    let mut bound_types: Vec<String> = Vec::new();
    let mut bounds = Vec::new();
    for m in &metrics {
        let ty = &m.ty;
        let key = quote!(#ty).to_string();
        if bound_types.contains(&key) {
            continue;
        }
        bound_types.push(key);
        // Higher-ranked, so that the bound is checked where the function is
        // called, not here: structs of shoal handles still derive, they just
        // cannot call `register_global`.
        bounds.push(quote_spanned! {ty.span()=>
            for<'__shoal> #ty: ::shoal::__private::RecorderMetric
        });
    }

    Ok(quote! {
        impl #ident {
            /// Registers and describes every metric of this struct with `shoal`.
            #vis fn register(shoal: &::shoal::__private::Shoal) -> Self {
                let __recorder: &dyn ::shoal::__private::metrics::Recorder = shoal;
                #(#describes)*
                Self { #(#shoal_inits,)* }
            }

            /// Registers and describes every metric of this struct with `recorder`.
            #vis fn register_with(recorder: &dyn ::shoal::__private::metrics::Recorder) -> Self
            where
                #(#bounds,)*
            {
                let __recorder = recorder;
                #(#describes)*
                Self { #(#recorder_inits,)* }
            }

            /// Registers and describes every metric of this struct with the
            /// current `metrics` recorder: the global one, unless a local
            /// one is set on this thread.
            #vis fn register_global() -> Self
            where
                #(#bounds,)*
            {
                ::shoal::__private::metrics::with_recorder(|recorder| Self::register_with(recorder))
            }
        }
    })
}

fn fields_span(fields: &Fields, input: &DeriveInput) -> Span {
    match fields {
        Fields::Unit => input.ident.span(),
        _ => fields.span(),
    }
}

fn labels_tokens(labels: &[(String, String)]) -> TokenStream {
    let pairs = labels.iter().map(|(k, v)| quote!((#k, #v)));
    quote!(&[#(#pairs),*])
}

fn struct_prefix(input: &DeriveInput) -> syn::Result<Option<String>> {
    let mut prefix: Option<String> = None;
    for attr in &input.attrs {
        if attr.path().is_ident("metric") {
            return Err(syn::Error::new_spanned(
                attr,
                "`#[metric(...)]` goes on a field; on the struct, use `#[metrics(prefix = \"...\")]`",
            ));
        }
        if !attr.path().is_ident("metrics") {
            continue;
        }
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("prefix") {
                if prefix.is_some() {
                    return Err(meta.error("duplicate `prefix`"));
                }
                let lit: LitStr = meta.value()?.parse()?;
                let value = lit.value();
                if !is_metric_name(&value) {
                    return Err(syn::Error::new(
                        lit.span(),
                        format!("prefix `{value}` is not a valid metric name: use letters, digits, `_` and `:`, not starting with a digit"),
                    ));
                }
                prefix = Some(value);
                Ok(())
            } else {
                Err(meta.error(format!("unknown `metrics` attribute `{}`; expected `prefix`", path_string(&meta.path))))
            }
        })?;
    }
    Ok(prefix)
}

fn field_metric(field: &syn::Field, ident: &syn::Ident, prefix: Option<&str>) -> syn::Result<FieldMetric> {
    let mut name: Option<(String, Span)> = None;
    let mut unit: Option<String> = None;
    let mut description: Option<String> = None;
    let mut labels: Vec<(String, String)> = Vec::new();
    let mut seen_labels = false;
    for attr in &field.attrs {
        if attr.path().is_ident("metrics") {
            return Err(syn::Error::new_spanned(attr, "`#[metrics(...)]` goes on the struct; on a field, use `#[metric(...)]`"));
        }
        if !attr.path().is_ident("metric") {
            continue;
        }
        attr.parse_nested_meta(|meta| {
            let key = path_string(&meta.path);
            match key.as_str() {
                "name" => {
                    if name.is_some() {
                        return Err(meta.error("duplicate `name`"));
                    }
                    let lit: LitStr = meta.value()?.parse()?;
                    name = Some((lit.value(), lit.span()));
                }
                "unit" => {
                    if unit.is_some() {
                        return Err(meta.error("duplicate `unit`"));
                    }
                    let lit: LitStr = meta.value()?.parse()?;
                    let value = lit.value();
                    if !UNITS.contains(&value.as_str()) {
                        return Err(syn::Error::new(lit.span(), format!("unknown unit `{value}`; expected one of: {}", UNITS.join(", "))));
                    }
                    unit = Some(value);
                }
                "description" => {
                    if description.is_some() {
                        return Err(meta.error("duplicate `description`"));
                    }
                    let lit: LitStr = meta.value()?.parse()?;
                    description = Some(lit.value());
                }
                "labels" => {
                    if seen_labels {
                        return Err(meta.error("duplicate `labels`"));
                    }
                    seen_labels = true;
                    meta.parse_nested_meta(|label| {
                        let k = path_string(&label.path);
                        if !is_label_key(&k) {
                            return Err(label.error(format!(
                                "`{k}` is not a valid label key: use letters, digits and `_`, not starting with a digit or `__`"
                            )));
                        }
                        if labels.iter().any(|(existing, _)| *existing == k) {
                            return Err(label.error(format!("duplicate label `{k}`")));
                        }
                        let v: LitStr = label.value()?.parse()?;
                        labels.push((k, v.value()));
                        Ok(())
                    })?;
                }
                _ => {
                    return Err(
                        meta.error(format!("unknown `metric` attribute `{key}`; expected `name`, `unit`, `description` or `labels`"))
                    )
                }
            }
            Ok(())
        })?;
    }
    let field_name = ident.to_string();
    let field_name = field_name.strip_prefix("r#").unwrap_or(&field_name).to_string();
    let (base, span) = name.unwrap_or((field_name, ident.span()));
    let full = match prefix {
        Some(p) => format!("{p}_{base}"),
        None => base,
    };
    if !is_metric_name(&full) {
        return Err(syn::Error::new(
            span,
            format!("`{full}` is not a valid metric name: use letters, digits, `_` and `:`, not starting with a digit"),
        ));
    }
    Ok(FieldMetric {
        ident: ident.clone(),
        ty: field.ty.clone(),
        name: full,
        unit,
        description: description.or_else(|| doc_text(&field.attrs)),
        labels,
    })
}

pub fn path_string(path: &syn::Path) -> String {
    path.segments.iter().map(|s| s.ident.to_string()).collect::<Vec<_>>().join("::")
}
