//! The one shell quoter: how every command line sidespawn prints (dry
//! runs, errors naming a podman call, the systemctl commands `units`
//! suggests) is written, so that pasting it into a POSIX shell (or zsh)
//! runs exactly that argv. Invariant: a quoted word is never expanded,
//! split or globbed by the shell.

use std::borrow::Cow;

/// Quotes one word for a POSIX shell: bare when it is made only of
/// characters no shell treats specially, else in single quotes with each
/// embedded `'` written as `'\''`.
pub fn shell_quote(word: &str) -> Cow<'_, str> {
    let safe = |b: u8| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b);
    // A leading `=` is expanded by zsh (`=cmd`), so it is quoted too.
    if !word.is_empty() && !word.starts_with('=') && word.bytes().all(safe) {
        Cow::Borrowed(word)
    } else {
        Cow::Owned(format!("'{}'", word.replace('\'', r"'\''")))
    }
}

/// Words quoted by [`shell_quote`] and joined with spaces: a command line
/// to paste into a shell.
pub fn quote_words(args: &[String]) -> String {
    args.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_leaves_plain_words_and_quotes_the_rest() {
        assert_eq!(
            shell_quote("label=a.b/c:d-e_f,g+h@i%j"),
            "label=a.b/c:d-e_f,g+h@i%j"
        );
        assert!(matches!(shell_quote("plain"), Cow::Borrowed(_)));
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
        assert_eq!(shell_quote("=cmd"), "'=cmd'");
        assert_eq!(shell_quote("~root"), "'~root'");
    }

    #[test]
    fn quoted_words_survive_a_real_shell() {
        let words: Vec<String> = [
            "",
            "a b",
            "it's",
            "'",
            "''",
            "$HOME",
            "`id`",
            "$(id)",
            "back\\slash",
            "new\nline",
            "*",
            "a;b|c&d>e",
            "\"dq\"",
            "~root",
            "=x",
            "--privileged",
            "ünïcode",
        ]
        .map(str::to_owned)
        .to_vec();
        let script = format!("printf '%s\\0' {}", quote_words(&words));
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}");
        let mut got: Vec<String> = out
            .stdout
            .split(|b| *b == 0)
            .map(|w| String::from_utf8(w.to_vec()).unwrap())
            .collect();
        assert_eq!(got.pop().as_deref(), Some(""), "trailing NUL");
        assert_eq!(got, words);
    }
}
