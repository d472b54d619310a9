//! `#[derive(LabelSet)]`.

use crate::metrics_derive::path_string;
use crate::names::{is_label_key, rename, snake_case, RENAME_RULES};
use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, LitStr};

pub fn expand(input: DeriveInput) -> syn::Result<TokenStream> {
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(&input.generics, "#[derive(LabelSet)] does not support generic types"));
    }
    match &input.data {
        Data::Enum(e) => expand_enum(&input, e),
        Data::Struct(s) => expand_struct(&input, &s.fields),
        Data::Union(u) => Err(syn::Error::new(u.union_token.span, "#[derive(LabelSet)] needs a fieldless enum or a struct of label sets")),
    }
}

struct EnumAttrs {
    key: Option<(String, Span)>,
    rename_all: Option<String>,
}

fn enum_attrs(attrs: &[syn::Attribute]) -> syn::Result<EnumAttrs> {
    let mut out = EnumAttrs { key: None, rename_all: None };
    for attr in attrs.iter().filter(|a| a.path().is_ident("label")) {
        attr.parse_nested_meta(|meta| {
            let key = path_string(&meta.path);
            match key.as_str() {
                "key" => {
                    if out.key.is_some() {
                        return Err(meta.error("duplicate `key`"));
                    }
                    let lit: LitStr = meta.value()?.parse()?;
                    out.key = Some((lit.value(), lit.span()));
                }
                "rename_all" => {
                    if out.rename_all.is_some() {
                        return Err(meta.error("duplicate `rename_all`"));
                    }
                    let lit: LitStr = meta.value()?.parse()?;
                    if rename("X", &lit.value()).is_none() {
                        return Err(syn::Error::new(
                            lit.span(),
                            format!("unknown `rename_all` rule `{}`; expected one of {RENAME_RULES}", lit.value()),
                        ));
                    }
                    out.rename_all = Some(lit.value());
                }
                _ => return Err(meta.error(format!("unknown `label` attribute `{key}` on an enum; expected `key` or `rename_all`"))),
            }
            Ok(())
        })?;
    }
    Ok(out)
}

fn variant_value(variant: &syn::Variant) -> syn::Result<Option<String>> {
    let mut value = None;
    for attr in variant.attrs.iter().filter(|a| a.path().is_ident("label")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("value") {
                if value.is_some() {
                    return Err(meta.error("duplicate `value`"));
                }
                let lit: LitStr = meta.value()?.parse()?;
                value = Some(lit.value());
                Ok(())
            } else {
                Err(meta.error(format!("unknown `label` attribute `{}` on a variant; expected `value`", path_string(&meta.path))))
            }
        })?;
    }
    Ok(value)
}

fn expand_enum(input: &DeriveInput, e: &syn::DataEnum) -> syn::Result<TokenStream> {
    let ident = &input.ident;
    if e.variants.is_empty() {
        return Err(syn::Error::new(
            ident.span(),
            "#[derive(LabelSet)] needs at least one variant: a label set with no value cannot label anything",
        ));
    }
    let attrs = enum_attrs(&input.attrs)?;
    let key = match &attrs.key {
        Some((k, span)) => {
            if !is_label_key(k) {
                return Err(syn::Error::new(
                    *span,
                    format!("`{k}` is not a valid label key: use letters, digits and `_`, not starting with a digit or `__`"),
                ));
            }
            k.clone()
        }
        None => snake_case(&ident.to_string()),
    };
    let rule = attrs.rename_all.as_deref().unwrap_or("snake_case");
    let mut values: Vec<String> = Vec::new();
    let mut arms = Vec::new();
    for (i, variant) in e.variants.iter().enumerate() {
        if !matches!(variant.fields, Fields::Unit) {
            return Err(syn::Error::new(
                variant.fields.span(),
                "#[derive(LabelSet)] variants cannot carry data: each variant is one label value",
            ));
        }
        let value = match variant_value(variant)? {
            Some(v) => v,
            None => rename(&variant.ident.to_string(), rule).expect("rule checked"),
        };
        if let Some(j) = values.iter().position(|v| *v == value) {
            let first = &e.variants[j].ident;
            return Err(syn::Error::new(
                variant.ident.span(),
                format!("label value `{value}` is already used by variant `{first}`; give one of them another `#[label(value = \"...\")]`"),
            ));
        }
        values.push(value);
        let v = &variant.ident;
        arms.push(quote!(#ident::#v => #i));
    }
    let n = values.len();
    Ok(quote! {
        impl ::shoal::__private::LabelSet for #ident {
            const CARDINALITY: usize = #n;

            #[inline]
            fn index(&self) -> usize {
                match *self {
                    #(#arms,)*
                }
            }

            fn labels_at(index: usize, out: &mut ::std::vec::Vec<(&'static str, &'static str)>) {
                const VALUES: [&str; #n] = [#(#values),*];
                out.push((#key, VALUES[index]));
            }
        }
    })
}

fn expand_struct(input: &DeriveInput, fields: &Fields) -> syn::Result<TokenStream> {
    let ident = &input.ident;
    if let Some(attr) = input.attrs.iter().find(|a| a.path().is_ident("label")) {
        return Err(syn::Error::new_spanned(
            attr,
            "`#[label(...)]` goes on an enum or its variants; a struct takes the labels of its fields",
        ));
    }
    for field in fields {
        if let Some(attr) = field.attrs.iter().find(|a| a.path().is_ident("label")) {
            return Err(syn::Error::new_spanned(
                attr,
                "`#[label(...)]` goes on an enum or its variants; a struct takes the labels of its fields",
            ));
        }
    }
    let members: Vec<syn::Member> = fields
        .iter()
        .enumerate()
        .map(|(i, f)| match &f.ident {
            Some(id) => syn::Member::Named(id.clone()),
            None => syn::Member::Unnamed(syn::Index::from(i)),
        })
        .collect();
    let types: Vec<&syn::Type> = fields.iter().map(|f| &f.ty).collect();

    let cardinality = types.iter().fold(quote!(1usize), |acc, ty| {
        quote_spanned! {ty.span()=>
            ::shoal::__private::checked_product(#acc, <#ty as ::shoal::__private::LabelSet>::CARDINALITY)
        }
    });
    // Mixed radix: the first field is the most significant digit.
    let index = members.iter().zip(&types).fold(quote!(0usize), |acc, (member, ty)| {
        quote_spanned! {ty.span()=>
            #acc * <#ty as ::shoal::__private::LabelSet>::CARDINALITY
                + <#ty as ::shoal::__private::LabelSet>::index(&self.#member)
        }
    });
    let digits = types.iter().enumerate().rev().map(|(i, ty)| {
        let d = syn::Ident::new(&format!("__digit{i}"), Span::call_site());
        quote_spanned! {ty.span()=>
            let #d = __rest % <#ty as ::shoal::__private::LabelSet>::CARDINALITY;
            let __rest = __rest / <#ty as ::shoal::__private::LabelSet>::CARDINALITY;
        }
    });
    let pushes = types.iter().enumerate().map(|(i, ty)| {
        let d = syn::Ident::new(&format!("__digit{i}"), Span::call_site());
        quote_spanned! {ty.span()=>
            <#ty as ::shoal::__private::LabelSet>::labels_at(#d, out);
        }
    });
    Ok(quote! {
        impl ::shoal::__private::LabelSet for #ident {
            const CARDINALITY: usize = #cardinality;

            #[inline]
            fn index(&self) -> usize {
                #index
            }

            #[allow(clippy::let_and_return, unused_variables)]
            fn labels_at(index: usize, out: &mut ::std::vec::Vec<(&'static str, &'static str)>) {
                let __rest = index;
                #(#digits)*
                #(#pushes)*
            }
        }
    })
}
