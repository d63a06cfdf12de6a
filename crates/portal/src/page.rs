//! The login page: one self-contained HTML document (no script, no external asset), so that
//! it works behind any Content-Security-Policy the front sets.

/// The page, with `error` shown above the form and `user` filled in (both escaped).
pub(crate) fn login_page(error: Option<&str>, user: &str) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>\n", escape(e)))
        .unwrap_or_default();
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Log in</title>
<style>
body {{ font-family: sans-serif; background: #f4f5f7; margin: 0; }}
main {{ max-width: 22rem; margin: 10vh auto; background: #fff; padding: 2rem;
        border-radius: 8px; box-shadow: 0 1px 4px rgba(0,0,0,.15); }}
h1 {{ font-size: 1.4rem; margin-top: 0; }}
label {{ display: block; margin: 1rem 0 .3rem; }}
input {{ width: 100%; box-sizing: border-box; padding: .5rem; font-size: 1rem; }}
button {{ margin-top: 1.5rem; width: 100%; padding: .6rem; font-size: 1rem; }}
.error {{ color: #b00020; font-weight: bold; }}
</style>
</head>
<body>
<main>
<h1>Log in</h1>
{error}<form method="post" action="login">
<label for="user">User</label>
<input id="user" name="user" autocomplete="username" required autofocus value="{user}">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Log in</button>
</form>
</main>
</body>
</html>
"#,
        user = escape(user),
    )
}

/// HTML-escapes text for element content and double-quoted attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_text_cannot_inject_markup() {
        let p = login_page(Some("x"), "\"><script>alert(1)</script>");
        assert!(!p.contains("<script>"), "{p}");
        assert!(p.contains("value=\"&quot;&gt;&lt;script&gt;"), "{p}");
        assert!(p.contains("<p class=\"error\" role=\"alert\">x</p>"));
        assert!(!login_page(None, "").contains("class=\"error\""));
    }
}
