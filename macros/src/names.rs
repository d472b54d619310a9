//! Names: validation of metric names and label keys, case conversion, doc
//! comments.

/// The units `metrics::Unit::from_string` accepts.
pub const UNITS: &[&str] = &[
    "count",
    "percent",
    "seconds",
    "milliseconds",
    "microseconds",
    "nanoseconds",
    "tebibytes",
    "gibibytes",
    "mebibytes",
    "kibibytes",
    "bytes",
    "terabits_per_second",
    "gigabits_per_second",
    "megabits_per_second",
    "kilobits_per_second",
    "bits_per_second",
    "count_per_second",
];

// One implementation of the name rules, shared with the SDK and the
// collector (compile time and run time agree by construction).
pub use shoal_core::names::{is_label_key, is_metric_name};

/// The words of an identifier written in `PascalCase` or `snake_case`.
fn words(ident: &str) -> Vec<String> {
    let ident = ident.strip_prefix("r#").unwrap_or(ident);
    let mut out: Vec<String> = Vec::new();
    let chars: Vec<char> = ident.chars().collect();
    let mut cur = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c == '_' {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        let boundary = c.is_uppercase()
            && !cur.is_empty()
            && (chars[i - 1].is_lowercase() || chars[i - 1].is_ascii_digit() || chars.get(i + 1).is_some_and(|n| n.is_lowercase()));
        if boundary {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// `HttpMethod` -> `http_method`.
pub fn snake_case(ident: &str) -> String {
    words(ident).iter().map(|w| w.to_lowercase()).collect::<Vec<_>>().join("_")
}

/// Applies a `rename_all` rule; `None` if the rule is unknown.
pub fn rename(ident: &str, rule: &str) -> Option<String> {
    let ident = ident.strip_prefix("r#").unwrap_or(ident);
    let w = words(ident);
    Some(match rule {
        "snake_case" => snake_case(ident),
        "lowercase" => w.concat().to_lowercase(),
        "UPPERCASE" => w.concat().to_uppercase(),
        "SCREAMING_SNAKE_CASE" => w.iter().map(|w| w.to_uppercase()).collect::<Vec<_>>().join("_"),
        "kebab-case" => w.iter().map(|w| w.to_lowercase()).collect::<Vec<_>>().join("-"),
        "PascalCase" => ident.to_string(),
        _ => return None,
    })
}

/// The `rename_all` rules [`rename`] accepts.
pub const RENAME_RULES: &str = "`snake_case`, `lowercase`, `UPPERCASE`, `SCREAMING_SNAKE_CASE`, `kebab-case`, `PascalCase`";

/// The text of the doc comments among `attrs`, lines trimmed and joined by
/// spaces; `None` if there is none.
pub fn doc_text(attrs: &[syn::Attribute]) -> Option<String> {
    let mut lines = Vec::new();
    for attr in attrs {
        if !attr.path().is_ident("doc") {
            continue;
        }
        if let syn::Meta::NameValue(nv) = &attr.meta {
            if let syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(s), .. }) = &nv.value {
                let line = s.value();
                let line = line.trim();
                if !line.is_empty() {
                    lines.push(line.to_string());
                }
            }
        }
    }
    (!lines.is_empty()).then(|| lines.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names() {
        assert!(is_metric_name("http_requests_total"));
        assert!(is_metric_name("ns:rule_total"));
        assert!(!is_metric_name("9lives"));
        assert!(!is_metric_name("http-requests"));
        assert!(!is_metric_name(""));
    }

    #[test]
    fn label_keys() {
        assert!(is_label_key("method"));
        assert!(!is_label_key("__name__"));
        assert!(!is_label_key("a:b"));
        assert!(!is_label_key("1a"));
    }

    #[test]
    fn cases() {
        assert_eq!(snake_case("HttpMethod"), "http_method");
        assert_eq!(snake_case("HTTPMethod"), "http_method");
        assert_eq!(snake_case("Status5xx"), "status5xx");
        assert_eq!(snake_case("NotFound"), "not_found");
        assert_eq!(snake_case("r#Get"), "get");
        assert_eq!(rename("NotFound", "kebab-case").unwrap(), "not-found");
        assert_eq!(rename("NotFound", "SCREAMING_SNAKE_CASE").unwrap(), "NOT_FOUND");
        assert_eq!(rename("Get", "UPPERCASE").unwrap(), "GET");
        assert_eq!(rename("NotFound", "lowercase").unwrap(), "notfound");
        assert_eq!(rename("NotFound", "PascalCase").unwrap(), "NotFound");
        assert!(rename("Get", "camelCase").is_none());
    }
}
