//! `application/x-www-form-urlencoded` bodies of the pages' forms.

/// A form's fields. A field sent twice counts as absent: no handler has to choose which of
/// two CSRF tokens or two passwords is meant.
pub struct Form {
    fields: Vec<(String, String)>,
}

impl Form {
    /// Parses a body; `None` when it is not a form (wrong content type).
    pub fn parse(content_type: Option<&str>, body: &[u8]) -> Option<Form> {
        let media = content_type?.split(';').next()?.trim();
        if !media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return None;
        }
        Some(Form {
            fields: url::form_urlencoded::parse(body).into_owned().collect(),
        })
    }

    /// The field's value when it was sent exactly once.
    pub fn get(&self, name: &str) -> Option<&str> {
        let mut found = self.fields.iter().filter(|(n, _)| n == name);
        match (found.next(), found.next()) {
            (Some((_, value)), None) => Some(value.as_str()),
            _ => None,
        }
    }

    /// The field's value, trimmed, when sent once and not empty.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.get(name).map(str::trim).filter(|v| !v.is_empty())
    }

    /// A checkbox: sent (with any value) once.
    pub fn checked(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// One value of a query string, decoded; absent or sent twice: `None`.
pub fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    let mut found = url::form_urlencoded::parse(query?.as_bytes()).filter(|(n, _)| n == name);
    match (found.next(), found.next()) {
        (Some((_, value)), None) => Some(value.into_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_sent_once_are_read_and_twice_are_absent() {
        let form = Form::parse(
            Some("application/x-www-form-urlencoded; charset=UTF-8"),
            b"name=al%C3%AFce&password=a+b%26c&csrf=1&csrf=2&ro=on&empty=",
        )
        .unwrap();
        assert_eq!(form.get("name"), Some("alïce"));
        assert_eq!(form.get("password"), Some("a b&c"));
        assert_eq!(form.get("csrf"), None);
        assert!(form.checked("ro"));
        assert_eq!(form.text("empty"), None);
        assert!(Form::parse(Some("text/plain"), b"name=x").is_none());
        assert!(Form::parse(None, b"name=x").is_none());
        assert_eq!(
            query_value(Some("rd=%2Fa%3Fb%3D1&x=2"), "rd").as_deref(),
            Some("/a?b=1")
        );
        assert_eq!(query_value(Some("rd=/a&rd=/b"), "rd"), None);
    }
}
