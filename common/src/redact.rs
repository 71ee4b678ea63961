//! Display forms of URLs that may carry credentials: what logs, `/status` and error messages
//! show instead of the URL itself.
//!
//! How: a textual pass (no parsing that could fail): the userinfo's password becomes `***`
//! (a userinfo without a password, often a bare token, becomes `***` as a whole), every query
//! value becomes `***` (a query item without `=` is a bare token: `***`), a fragment becomes
//! `#***`. Scheme, host, port and path stay, so the URL still says where traffic goes:
//! `https://user:secret@host/v1?api_key=k` → `https://user:***@host/v1?api_key=***`.
//!
//! Limits: a secret in the path itself (`/hooks/<token>`) is not recognised; neither the
//! agent's nor the proxy's own endpoints carry one there.

const MASK: &str = "***";

/// `raw` with its credentials masked (see the module docs).
pub fn url(raw: &str) -> String {
    let (scheme, rest) = match raw.find("://") {
        Some(i) => raw.split_at(i + 3),
        None => ("", raw),
    };
    let (before_fragment, fragment) = match rest.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (rest, None),
    };
    let (before_query, query) = match before_fragment.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (before_fragment, None),
    };
    let mut out = String::with_capacity(raw.len());
    out.push_str(scheme);
    if scheme.is_empty() {
        out.push_str(before_query);
    } else {
        let (authority, path) = match before_query.find('/') {
            Some(i) => before_query.split_at(i),
            None => (before_query, ""),
        };
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                match userinfo.split_once(':') {
                    Some((user, _)) => {
                        out.push_str(user);
                        out.push(':');
                        out.push_str(MASK);
                    }
                    None => out.push_str(MASK),
                }
                out.push('@');
                out.push_str(host);
            }
            None => out.push_str(authority),
        }
        out.push_str(path);
    }
    if let Some(q) = query {
        out.push('?');
        let items: Vec<String> = q
            .split('&')
            .map(|item| match item.split_once('=') {
                Some((k, _)) => format!("{k}={MASK}"),
                None if item.is_empty() => String::new(),
                None => MASK.to_string(),
            })
            .collect();
        out.push_str(&items.join("&"));
    }
    if let Some(f) = fragment {
        out.push('#');
        if !f.is_empty() {
            out.push_str(MASK);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::url;

    #[test]
    fn userinfo_query_and_fragment_are_masked() {
        assert_eq!(
            url("https://u:secret@127.0.0.1:1/v1/metrics?api_key=secret2&x=1#frag"),
            "https://u:***@127.0.0.1:1/v1/metrics?api_key=***&x=***#***"
        );
        assert_eq!(url("https://tokenonly@host/p"), "https://***@host/p");
        assert_eq!(url("http://host:4318/v1/metrics?token"), "http://host:4318/v1/metrics?***");
        assert_eq!(url("http://a:b@host?k=v"), "http://a:***@host?k=***");
        assert_eq!(url("/relative/path?sig=abc"), "/relative/path?sig=***");
    }

    #[test]
    fn urls_without_credentials_are_unchanged() {
        for u in ["http://127.0.0.1:51678", "https://collector:4318/v1/metrics", "http://[::1]:9804/", ""] {
            assert_eq!(url(u), u);
        }
    }

    #[test]
    fn an_at_sign_in_the_path_is_not_userinfo() {
        assert_eq!(url("http://host/a@b?x=1"), "http://host/a@b?x=***");
    }
}
