//! `#[timed]`.

use crate::names::is_metric_name;
use proc_macro2::{Span, TokenStream, TokenTree};
use quote::quote;
use syn::spanned::Spanned;
use syn::{AttrStyle, Item, ItemFn, LitStr, ReturnType, TraitItemFn};

struct Args {
    prefix: Option<String>,
    concurrency: bool,
}

fn parse_args(args: TokenStream) -> syn::Result<Args> {
    let mut out = Args { prefix: None, concurrency: false };
    let mut seen_concurrency = false;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            if out.prefix.is_some() {
                return Err(meta.error("duplicate `name`"));
            }
            let lit: LitStr = meta.value()?.parse()?;
            let value = lit.value();
            if !is_metric_name(&value) {
                return Err(syn::Error::new(
                    lit.span(),
                    format!("`{value}` is not a valid metric name prefix: use letters, digits, `_` and `:`, not starting with a digit"),
                ));
            }
            out.prefix = Some(value);
            Ok(())
        } else if meta.path.is_ident("concurrency") {
            if seen_concurrency {
                return Err(meta.error("duplicate `concurrency`"));
            }
            seen_concurrency = true;
            out.concurrency = true;
            Ok(())
        } else {
            let name = meta.path.segments.iter().map(|s| s.ident.to_string()).collect::<Vec<_>>().join("::");
            Err(meta.error(format!("unknown #[timed] argument `{name}`; expected `name = \"...\"` or `concurrency`")))
        }
    });
    syn::parse::Parser::parse2(parser, args)?;
    Ok(out)
}

/// Parses the item, with a clear error for anything but a function with a
/// body.
fn parse_fn(item: TokenStream) -> syn::Result<ItemFn> {
    let first_err = match syn::parse2::<ItemFn>(item.clone()) {
        Ok(f) => return Ok(f),
        Err(e) => e,
    };
    if let Ok(f) = syn::parse2::<TraitItemFn>(item.clone()) {
        if f.default.is_none() {
            let span = f.semi_token.map(|s| s.span).unwrap_or_else(|| f.sig.span());
            return Err(syn::Error::new(span, "#[timed] needs a function body: put it on the implementation, not on the declaration"));
        }
    }
    if let Ok(item) = syn::parse2::<Item>(item) {
        return Err(syn::Error::new(item_keyword_span(&item), "#[timed] can only be applied to functions and methods"));
    }
    Err(first_err)
}

fn item_keyword_span(item: &Item) -> Span {
    match item {
        Item::Struct(i) => i.struct_token.span,
        Item::Enum(i) => i.enum_token.span,
        Item::Union(i) => i.union_token.span,
        Item::Impl(i) => i.impl_token.span,
        Item::Trait(i) => i.trait_token.span,
        Item::Mod(i) => i.mod_token.span,
        Item::Const(i) => i.const_token.span,
        Item::Static(i) => i.static_token.span,
        Item::Type(i) => i.type_token.span,
        Item::Use(i) => i.use_token.span,
        Item::ForeignMod(i) => i.abi.extern_token.span,
        Item::ExternCrate(i) => i.extern_token.span,
        Item::Macro(i) => i.mac.path.span(),
        other => other.span(),
    }
}

/// True if the tokens of a type contain `impl` (an unnameable return type).
fn mentions_impl(tokens: TokenStream) -> bool {
    tokens.into_iter().any(|t| match t {
        TokenTree::Ident(i) => i == "impl",
        TokenTree::Group(g) => mentions_impl(g.stream()),
        _ => false,
    })
}

pub fn expand(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let args = parse_args(args)?;
    let f = parse_fn(item)?;

    if let Some(c) = &f.sig.constness {
        return Err(syn::Error::new(c.span, "#[timed] cannot time a `const fn`: it may run at compile time, where there is no clock"));
    }
    if let ReturnType::Type(_, ty) = &f.sig.output {
        if matches!(**ty, syn::Type::Never(_)) {
            return Err(syn::Error::new(ty.span(), "#[timed] cannot time a function that never returns (`-> !`)"));
        }
    }

    let prefix = args.prefix.as_deref().unwrap_or("function");
    let calls = format!("{prefix}_calls_total");
    let duration = format!("{prefix}_duration_seconds");
    let in_flight = if args.concurrency {
        let name = format!("{prefix}_calls_in_flight");
        quote!(::core::option::Option::Some(#name))
    } else {
        quote!(::core::option::Option::None)
    };
    let fn_name = f.sig.ident.to_string();
    let fn_name = fn_name.strip_prefix("r#").unwrap_or(&fn_name).to_string();
    let is_async = f.sig.asyncness.is_some();

    let (outer, inner): (Vec<_>, Vec<_>) = f.attrs.iter().partition(|a| matches!(a.style, AttrStyle::Outer));
    let vis = &f.vis;
    let sig = &f.sig;
    let block = &f.block;

    let ret: Option<TokenStream> = match &f.sig.output {
        ReturnType::Default => Some(quote!(())),
        ReturnType::Type(_, ty) => {
            let t = quote!(#ty);
            (!mentions_impl(t.clone())).then_some(t)
        }
    };

    let callsite = quote! {
        static __SHOAL_TIMED: ::shoal::__private::Callsite = {
            static CALLS: [[::shoal::__private::metrics::Label; 3]; 4] =
                ::shoal::__private::call_labels(#fn_name, ::core::module_path!());
            static LABELS: [::shoal::__private::metrics::Label; 2] =
                ::shoal::__private::base_labels(#fn_name, ::core::module_path!());
            ::shoal::__private::Callsite::new(#calls, #duration, #in_flight, &CALLS, &LABELS, #is_async)
        };
    };
    let can_fail = match &ret {
        Some(ret) => quote! {{
            #[allow(unused_imports)]
            use ::shoal::__private::{PlainOutcome as _, ResultOutcome as _};
            (&::shoal::__private::Probe::<#ret>::new()).can_fail()
        }},
        None => quote!(false),
    };

    let body = if is_async {
        let classify = match &ret {
            Some(ret) => quote! {
                |__shoal_out: &#ret| {
                    #[allow(unused_imports)]
                    use ::shoal::__private::{PlainOutcome as _, ResultOutcome as _};
                    (&::shoal::__private::Probe::<#ret>::new()).is_error(__shoal_out)
                }
            },
            None => quote!(|_| false),
        };
        let turbofish = match &ret {
            Some(ret) => quote!(::<#ret, _, _>),
            None => quote!(),
        };
        // The first `return` of an async block fixes its output type: make it
        // one of the declared type, so that the body's returns coerce to it
        // as they would in the `async fn` itself (`&String` to `&str`, ...).
        let typed_block = match &ret {
            Some(ret) => quote! {
                async move {
                    #[allow(unreachable_code, clippy::diverging_sub_expression, clippy::let_unit_value)]
                    if false {
                        let __shoal_unreachable: #ret = loop {};
                        return __shoal_unreachable;
                    }
                    #block
                }
            },
            None => quote!(async move #block),
        };
        quote! {
            #callsite
            ::shoal::__private::timed_future #turbofish(&__SHOAL_TIMED, #can_fail, #typed_block, #classify).await
        }
    } else {
        let (annotation, is_error) = match &ret {
            Some(ret) => (
                quote!(: #ret),
                quote! {{
                    #[allow(unused_imports)]
                    use ::shoal::__private::{PlainOutcome as _, ResultOutcome as _};
                    (&::shoal::__private::Probe::<#ret>::new()).is_error(&__shoal_out)
                }},
            ),
            None => (quote!(), quote!(false)),
        };
        quote! {
            #callsite
            let __shoal_guard = __SHOAL_TIMED.start(#can_fail);
            #[allow(clippy::redundant_closure_call, clippy::let_unit_value)]
            let __shoal_out #annotation = ::shoal::__private::call_once(move || #block);
            __shoal_guard.finish(#is_error);
            __shoal_out
        }
    };

    Ok(quote! {
        #(#outer)*
        #vis #sig {
            #(#inner)*
            #body
        }
    })
}
