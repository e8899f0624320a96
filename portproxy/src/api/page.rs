//! The web page: one HTML document, its script and its style sheet, embedded in the binary
//! and served by the API. It loads nothing from elsewhere and runs no inline script, so the
//! API's Content-Security-Policy can allow this origin's files only.

const INDEX: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/style.css");

/// The asset at `path`: its content type and bytes.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    match path {
        "/" | "/index.html" => Some(("text/html; charset=utf-8", INDEX.as_bytes())),
        "/app.js" => Some(("text/javascript; charset=utf-8", SCRIPT.as_bytes())),
        "/style.css" => Some(("text/css; charset=utf-8", STYLE.as_bytes())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_small_and_self_contained() {
        let total = INDEX.len() + SCRIPT.len() + STYLE.len();
        assert!(total < 150 * 1024, "the page's assets are {total} bytes");
        for (name, text) in [
            ("index.html", INDEX),
            ("app.js", SCRIPT),
            ("style.css", STYLE),
        ] {
            for external in ["http://", "https://", "//cdn", "@import"] {
                assert!(!text.contains(external), "{name} refers to {external}");
            }
        }
        // The policy allows no inline script or style: every script has a source, no element
        // a style or an event attribute.
        assert_eq!(
            INDEX.matches("<script").count(),
            INDEX.matches("<script src=").count()
        );
        for inline in [
            " style=",
            " onclick=",
            " onload=",
            " onsubmit=",
            "javascript:",
        ] {
            assert!(!INDEX.contains(inline), "index.html has {inline}");
        }
        assert!(
            !SCRIPT.contains("innerHTML"),
            "the script builds elements, not markup"
        );
    }

    #[test]
    fn every_asset_is_served_and_nothing_else() {
        assert!(asset("/").is_some_and(|(t, _)| t.starts_with("text/html")));
        assert!(asset("/app.js").is_some());
        assert!(asset("/style.css").is_some());
        assert!(asset("/../Cargo.toml").is_none());
    }
}
