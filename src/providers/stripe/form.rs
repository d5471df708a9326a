//! Stripe's request encoding: `application/x-www-form-urlencoded` with nested keys, as
//! Stripe's SDKs write them. A map nests as `a[b]=…`, a list as `a[0]=…` (a list of maps as
//! `a[0][b]=…`), so `line_items[0][price_data][product_data][name]=Tea`. The same encoding
//! is a GET's query string (`expand[0]=payment_intent`).
//!
//! Keys keep their brackets literal (stripe-node does the same after encoding); every other
//! byte of a key or a value that is not `A-Z a-z 0-9 - . _ *` is percent-encoded, a space as
//! `+`. Empty maps and lists send nothing.

use std::fmt::Write as _;

/// One parameter's value: text, a map of named parameters, or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Param {
    Text(String),
    Map(Form),
    List(Vec<Param>),
}

/// An ordered set of parameters, encoded in the order they were added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form(Vec<(String, Param)>);

impl Form {
    pub fn new() -> Self {
        Self::default()
    }

    /// `key=value`.
    pub fn text(mut self, key: &str, value: impl ToString) -> Self {
        self.0
            .push((key.to_owned(), Param::Text(value.to_string())));
        self
    }

    /// `key=value` when there is a value.
    pub fn opt(self, key: &str, value: Option<impl ToString>) -> Self {
        match value {
            Some(v) => self.text(key, v),
            None => self,
        }
    }

    /// `key[…]=…` for each of `form`'s parameters.
    pub fn map(mut self, key: &str, form: Form) -> Self {
        self.0.push((key.to_owned(), Param::Map(form)));
        self
    }

    /// `key[i]=value` for each of `values`.
    pub fn texts<T: ToString>(mut self, key: &str, values: impl IntoIterator<Item = T>) -> Self {
        let list = values
            .into_iter()
            .map(|v| Param::Text(v.to_string()))
            .collect();
        self.0.push((key.to_owned(), Param::List(list)));
        self
    }

    /// `key[i][…]=…` for each of `forms`.
    pub fn maps(mut self, key: &str, forms: impl IntoIterator<Item = Form>) -> Self {
        let list = forms.into_iter().map(Param::Map).collect();
        self.0.push((key.to_owned(), Param::List(list)));
        self
    }

    pub fn is_empty(&self) -> bool {
        self.pairs().is_empty()
    }

    /// The flat `(key, value)` pairs, keys nested with brackets, not yet percent-encoded.
    pub fn pairs(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (key, param) in &self.0 {
            flatten(key.clone(), param, &mut out);
        }
        out
    }

    /// The encoded body (or query string, without its `?`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        for (key, value) in self.pairs() {
            if !out.is_empty() {
                out.push('&');
            }
            escape(&key, true, &mut out);
            out.push('=');
            escape(&value, false, &mut out);
        }
        out
    }
}

fn flatten(key: String, param: &Param, out: &mut Vec<(String, String)>) {
    match param {
        Param::Text(v) => out.push((key, v.clone())),
        Param::Map(form) => {
            for (k, p) in &form.0 {
                flatten(format!("{key}[{k}]"), p, out);
            }
        }
        Param::List(items) => {
            for (i, p) in items.iter().enumerate() {
                flatten(format!("{key}[{i}]"), p, out);
            }
        }
    }
}

/// application/x-www-form-urlencoded's byte serializer (the WHATWG URL standard's), with the
/// brackets of a key left as they are.
fn escape(s: &str, key: bool, out: &mut String) {
    for chunk in form_urlencoded::byte_serialize(s.as_bytes()) {
        if key {
            out.push_str(&chunk.replace("%5B", "[").replace("%5D", "]"));
        } else {
            out.push_str(chunk);
        }
    }
}

/// `{base}?{query}`, or `base` alone when the query is empty.
pub fn with_query(base: &str, query: &Form) -> String {
    let encoded = query.encode();
    let mut url = base.to_owned();
    if !encoded.is_empty() {
        let _ = write!(url, "?{encoded}");
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_parameters_in_order() {
        let f = Form::new()
            .text("mode", "payment")
            .text("amount", 1999)
            .opt("customer", None::<&str>)
            .opt("email", Some("a@b.example"));
        assert_eq!(f.encode(), "mode=payment&amount=1999&email=a%40b.example");
    }

    #[test]
    fn nested_maps_and_lists() {
        let f = Form::new()
            .map("metadata", Form::new().text("coffer_checkout_id", "c1"))
            .maps(
                "line_items",
                [
                    Form::new().text("price", "price_1").text("quantity", 2),
                    Form::new()
                        .map(
                            "price_data",
                            Form::new()
                                .text("currency", "usd")
                                .text("unit_amount", 500)
                                .map("product_data", Form::new().text("name", "Tea & cake"))
                                .map("recurring", Form::new().text("interval", "month")),
                        )
                        .text("quantity", 1),
                ],
            )
            .texts("expand", ["payment_intent", "subscription"]);
        assert_eq!(
            f.pairs(),
            [
                ("metadata[coffer_checkout_id]", "c1"),
                ("line_items[0][price]", "price_1"),
                ("line_items[0][quantity]", "2"),
                ("line_items[1][price_data][currency]", "usd"),
                ("line_items[1][price_data][unit_amount]", "500"),
                (
                    "line_items[1][price_data][product_data][name]",
                    "Tea & cake"
                ),
                ("line_items[1][price_data][recurring][interval]", "month"),
                ("line_items[1][quantity]", "1"),
                ("expand[0]", "payment_intent"),
                ("expand[1]", "subscription"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert_eq!(
            f.encode(),
            "metadata[coffer_checkout_id]=c1&line_items[0][price]=price_1&line_items[0][quantity]=2\
             &line_items[1][price_data][currency]=usd&line_items[1][price_data][unit_amount]=500\
             &line_items[1][price_data][product_data][name]=Tea+%26+cake\
             &line_items[1][price_data][recurring][interval]=month&line_items[1][quantity]=1\
             &expand[0]=payment_intent&expand[1]=subscription"
        );
    }

    #[test]
    fn values_are_escaped_and_brackets_in_values_too() {
        let f = Form::new()
            .text("success_url", "https://shop.example/ok?s=1&t=[x]")
            .text("query", "metadata['coffer_customer_id']:'0190'")
            .text("name", "Zoë");
        assert_eq!(
            f.encode(),
            "success_url=https%3A%2F%2Fshop.example%2Fok%3Fs%3D1%26t%3D%5Bx%5D\
             &query=metadata%5B%27coffer_customer_id%27%5D%3A%270190%27\
             &name=Zo%C3%AB"
        );
    }

    #[test]
    fn empty_collections_send_nothing() {
        let f = Form::new()
            .map("metadata", Form::new())
            .maps("line_items", [])
            .texts("expand", Vec::<String>::new());
        assert!(f.is_empty());
        assert_eq!(f.encode(), "");
        assert_eq!(
            with_query("https://api.stripe.com/v1/x", &f),
            "https://api.stripe.com/v1/x"
        );
        assert_eq!(
            with_query(
                "https://api.stripe.com/v1/x",
                &Form::new().texts("expand", ["a.b"])
            ),
            "https://api.stripe.com/v1/x?expand[0]=a.b"
        );
    }
}
