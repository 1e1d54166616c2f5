//! `#[ppio_test_macros::test]`: a `#[tokio::test]` that fails, instead of hanging, when it runs
//! longer than its deadline in real time (not the paused clock of a `start_paused` test).
//!
//! ```ignore
//! #[ppio_test_macros::test]                                  // 300 s
//! #[ppio_test_macros::test(start_paused = true)]             // arguments go to tokio::test
//! #[ppio_test_macros::test(deadline = 900, flavor = "multi_thread")]
//! ```
//!
//! The body runs inside `ppio_testenv::within`, which panics with the test's name when the
//! deadline passes: libtest reports that one test as failed, the guards of the test (processes,
//! namespaces) are dropped as on any failure, and the other tests go on. `PPIO_TEST_DEADLINE_SCALE`
//! (a whole number, default 1) multiplies every deadline, for slow machines.

use proc_macro::{Delimiter, Group, Ident, Literal, Punct, Spacing, Span, TokenStream, TokenTree};

/// The default deadline of a test, in seconds.
const DEFAULT_DEADLINE_SECS: u64 = 300;

#[proc_macro_attribute]
pub fn test(args: TokenStream, item: TokenStream) -> TokenStream {
    let (deadline, tokio_args) = match split_args(args) {
        Ok(v) => v,
        Err(msg) => return compile_error(&msg),
    };
    let mut tokens: Vec<TokenTree> = item.into_iter().collect();
    let Some(TokenTree::Group(body)) = tokens.pop() else {
        return compile_error("#[ppio_test_macros::test] expects an `async fn` with a body");
    };
    if body.delimiter() != Delimiter::Brace {
        return compile_error("#[ppio_test_macros::test] expects an `async fn` with a body");
    }
    let name = fn_name(&tokens).unwrap_or_else(|| "test".into());
    // `::ppio_testenv::within(deadline, "name", async move BODY).await`, the body's own
    // tokens (and spans) kept.
    let mut call_args: TokenStream = parse(&format!(
        "::std::time::Duration::from_secs({deadline}), \"{name}\", async move"
    ));
    call_args.extend([TokenTree::Group(body)]);
    let mut wrapped = parse("::ppio_testenv::within");
    wrapped.extend([TokenTree::Group(Group::new(
        Delimiter::Parenthesis,
        call_args,
    ))]);
    wrapped.extend(parse(".await"));
    let mut out = parse(&format!("#[::tokio::test({tokio_args})]"));
    out.extend(tokens);
    out.extend([TokenTree::Group(Group::new(Delimiter::Brace, wrapped))]);
    out
}

/// Takes `deadline = N` (seconds) out of the arguments; the rest is for `tokio::test`.
fn split_args(args: TokenStream) -> Result<(u64, String), String> {
    let mut deadline = DEFAULT_DEADLINE_SECS;
    let mut rest: Vec<String> = Vec::new();
    let mut current: Vec<TokenTree> = Vec::new();
    let mut flush = |current: &mut Vec<TokenTree>| -> Result<(), String> {
        if current.is_empty() {
            return Ok(());
        }
        let is_deadline =
            matches!(current.first(), Some(TokenTree::Ident(i)) if i.to_string() == "deadline");
        if is_deadline {
            let value = match current.get(2) {
                Some(TokenTree::Literal(l)) => l.to_string(),
                _ => return Err("deadline = <seconds>".into()),
            };
            deadline = value
                .parse()
                .map_err(|_| format!("deadline must be whole seconds, got {value}"))?;
        } else {
            rest.push(
                current
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
        current.clear();
        Ok(())
    };
    for t in args {
        match &t {
            TokenTree::Punct(p) if p.as_char() == ',' => flush(&mut current)?,
            _ => current.push(t),
        }
    }
    flush(&mut current)?;
    Ok((deadline, rest.join(", ")))
}

fn parse(code: &str) -> TokenStream {
    code.parse()
        .unwrap_or_else(|_| compile_error("ppio_test_macros: internal token error"))
}

fn fn_name(tokens: &[TokenTree]) -> Option<String> {
    let at = tokens
        .iter()
        .position(|t| matches!(t, TokenTree::Ident(i) if i.to_string() == "fn"))?;
    match tokens.get(at + 1) {
        Some(TokenTree::Ident(i)) => Some(i.to_string()),
        _ => None,
    }
}

fn compile_error(msg: &str) -> TokenStream {
    [
        TokenTree::Ident(Ident::new("compile_error", Span::call_site())),
        TokenTree::Punct(Punct::new('!', Spacing::Alone)),
        TokenTree::Group(Group::new(
            Delimiter::Parenthesis,
            [TokenTree::Literal(Literal::string(msg))]
                .into_iter()
                .collect(),
        )),
        TokenTree::Punct(Punct::new(';', Spacing::Alone)),
    ]
    .into_iter()
    .collect()
}
