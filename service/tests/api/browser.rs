//! The web UI in a real browser: headless Chromium driven through chromedriver (Debian's
//! `chromium` and `chromium-driver`) against a `berth serve` process. Signs in, browses catalog
//! → repository → index → platform manifest → referrer, copies a pull command, deletes a tag,
//! checks that hostile strings render as text, and saves a screenshot of each page in the
//! light and the dark theme and at phone width, under `target/tmp/ui-screenshots/` (or
//! `$BERTH_SCREENSHOTS`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use fantoccini::actions::InputSource;
use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;
use crate::ui::{ATTRIBUTE, HOSTILE, push_hostile, push_index, push_referrer};

/// chromedriver on a port of its own, stopped with the test.
struct Driver {
    _process: KillOnDrop,
    url: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn chromedriver() -> Driver {
    let port = free_port();
    let binary = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
    let process = Command::new(&binary)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{binary}: {e}; the browser tests need Debian's chromium and chromium-driver"));
    let driver = Driver { _process: KillOnDrop(process), url: format!("http://127.0.0.1:{port}") };
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if client.get(format!("{}/status", driver.url)).send().await.is_ok_and(|r| r.status().is_success()) {
            return driver;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver does not answer on {}", driver.url);
}

async fn browser(driver: &Driver, profile: &std::path::Path) -> Client {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let capabilities = json!({
        "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900", format!("--user-data-dir={}", profile.display())],
        }
    });
    let serde_json::Value::Object(capabilities) = capabilities else { unreachable!() };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector).capabilities(capabilities).connect(&driver.url).await.expect("a browser session")
}

fn screenshots() -> PathBuf {
    let dir = std::env::var_os("BERTH_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shoot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

async fn script(browser: &Client, code: &str) -> serde_json::Value {
    browser.execute(code, vec![]).await.unwrap()
}

/// Clicks `element` and waits until the page it leads to has loaded (the old page's window
/// is gone).
async fn click_to_load(browser: &Client, element: fantoccini::elements::Element) {
    script(browser, "window.berthOldPage = true;").await;
    element.click().await.unwrap();
    for _ in 0..200 {
        let loaded = script(browser, "return window.berthOldPage === undefined && document.readyState === 'complete';");
        if loaded.await == json!(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no new page after the click");
}

/// Clicks the link whose text is `text`, and waits for the page it leads to.
async fn follow(browser: &Client, text: &str) {
    let link = browser.find(Locator::LinkText(text)).await.unwrap_or_else(|_| panic!("a link {text:?}"));
    click_to_load(browser, link).await;
}

/// Fills in the sign-in form and sends it.
async fn sign_in(browser: &Client, user: &str, password: &str) {
    browser.find(Locator::Css("input[name=user]")).await.unwrap().send_keys(user).await.unwrap();
    browser.find(Locator::Css("input[name=password]")).await.unwrap().send_keys(password).await.unwrap();
    click_to_load(browser, browser.find(Locator::Css("form.login button")).await.unwrap()).await;
}

/// What every page must hold to: no script but Berth's own ran (no alert opened, no element
/// carries a handler from pushed text), and the page's own script did run (the CSP lets it).
async fn assert_clean(browser: &Client, page: &str) {
    assert!(browser.get_alert_text().await.is_err(), "{page}: an alert opened");
    let injected = script(browser, "return document.querySelectorAll('[onmouseover],[onerror],[onclick],img,iframe').length + document.scripts.length;").await;
    assert_eq!(injected, json!(1), "{page}: the only element that runs code is Berth's own script");
    let toggle = script(browser, "return document.querySelector('[data-theme-toggle]').hidden;").await;
    assert_eq!(toggle, json!(false), "{page}: app.js ran (the theme toggle shows)");
}

const RULES: &str = r#"
[[rules]]
users = ["alice"]
repositories = ["**"]
actions = ["pull", "push", "delete"]

[[rules]]
users = ["bob"]
repositories = ["**"]
actions = ["pull"]
"#;

#[tokio::test]
async fn a_browser_signs_in_browses_copies_and_deletes() {
    // Content first, with authentication off; then `berth serve` with users on the same data.
    let app = spawn_app().await;
    let index = push_index(&app, "demo/multi").await;
    let image = push_hostile(&app, "demo/hostile").await;
    push_referrer(&app, "demo/hostile", &image, "application/vnd.dev.cosign.artifact.sig.v1+json", "sig").await;
    push_referrer(&app, "demo/hostile", &image, "application/spdx+json", "sbom").await;
    let (_, dir) = app.stop().await;
    let htpasswd = dir.path().join("htpasswd");
    berth::auth::htpasswd::add_user(&htpasswd, "alice", "alice-password").unwrap();
    berth::auth::htpasswd::add_user(&htpasswd, "bob", "bob-password").unwrap();
    std::fs::write(dir.path().join("access.toml"), RULES).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("serve")
        .env("BERTH_LISTEN", &listen)
        .env("BERTH_DATA_DIR", dir.path())
        .env("BERTH_AUTH", "basic")
        .env("BERTH_HTPASSWD", &htpasswd)
        .env("BERTH_ACCESS", dir.path().join("access.toml"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("berth.log")).unwrap())
        .spawn()
        .unwrap();
    let app = attach(KillOnDrop(child), berth::config::Settings { listen, ..Default::default() }, dir).await;
    let base = app.base.clone();
    let host = base.trim_start_matches("http://").to_owned();

    let driver = chromedriver().await;
    let profile = tempfile::tempdir().unwrap();
    let b = browser(&driver, profile.path()).await;

    // Anonymous: `/` leads to the UI, which shows nothing here, and a way to sign in.
    b.goto(&format!("{base}/")).await.unwrap();
    assert_eq!(b.current_url().await.unwrap().path(), "/ui/");
    assert!(b.find(Locator::LinkText("demo/multi")).await.is_err(), "nothing is visible anonymously");
    follow(&b, "Sign in").await;
    shoot(&b, "login-light").await;
    sign_in(&b, "alice", "wrong").await;
    let alert = b.find(Locator::Css("p.error")).await.unwrap().text().await.unwrap();
    assert_eq!(alert, "Invalid user name or password.");
    sign_in(&b, "alice", "alice-password").await;
    b.find(Locator::Css("form.signout")).await.unwrap();
    assert_eq!(b.current_url().await.unwrap().path(), "/ui/");
    let cookie = b.get_named_cookie("berth_session").await.unwrap();
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(script(&b, "return document.cookie;").await, json!(""), "scripts cannot read the session");

    // Catalog → repository → index → platform manifest.
    assert_clean(&b, "catalog").await;
    shoot(&b, "catalog-light").await;
    follow(&b, "demo/multi").await;
    assert_clean(&b, "repository").await;
    shoot(&b, "repository-light").await;
    let text = b.find(Locator::Css("main")).await.unwrap().text().await.unwrap();
    assert!(text.contains("linux/amd64") && text.contains("linux/arm64"), "{text}");

    // The copy button puts the pull command on the clipboard: paste it somewhere to see.
    let button = b.find(Locator::Css("td.pull button[data-copy]")).await.unwrap();
    let command = button.attr("data-copy").await.unwrap().unwrap();
    assert!(command.starts_with(&format!("docker pull {host}/demo/multi:")), "{command}");
    button.click().await.unwrap();
    // The clipboard answers asynchronously; the button says "Copied" for a moment and keeps
    // `data-copied`.
    let mut copied = None;
    for _ in 0..100 {
        copied = button.attr("data-copied").await.unwrap();
        if copied.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(copied.as_deref(), Some("true"), "the button says it copied");
    script(&b, "const t = document.createElement('textarea'); t.id = 'paste'; document.body.append(t); t.focus();")
        .await;
    let paste = fantoccini::actions::KeyActions::new("keyboard".into())
        .then(fantoccini::actions::KeyAction::Down { value: '\u{E009}' })
        .then(fantoccini::actions::KeyAction::Down { value: 'v' })
        .then(fantoccini::actions::KeyAction::Up { value: 'v' })
        .then(fantoccini::actions::KeyAction::Up { value: '\u{E009}' });
    b.perform_actions(paste).await.unwrap();
    let pasted = b.find(Locator::Id("paste")).await.unwrap().prop("value").await.unwrap();
    assert_eq!(pasted.as_deref(), Some(command.as_str()), "what was copied");

    follow(&b, "latest").await;
    assert_clean(&b, "index").await;
    shoot(&b, "index-light").await;
    let platform_link = b.find(Locator::Css(&format!("a[href='/ui/r/demo/multi/-/m/{}']", index[1]))).await.unwrap();
    click_to_load(&b, platform_link).await;
    assert!(b.find(Locator::Css("main h1")).await.unwrap().text().await.unwrap().starts_with("Manifest"));
    assert_clean(&b, "platform manifest").await;
    shoot(&b, "manifest-light").await;

    // Hostile strings are text.
    b.goto(&format!("{base}/ui/r/demo/hostile/-/m/v1")).await.unwrap();
    assert_clean(&b, "hostile manifest").await;
    let text = b.find(Locator::Css("main")).await.unwrap().text().await.unwrap();
    for shown in [HOSTILE, ATTRIBUTE, "javascript:alert(1)", "<img src=x onerror=alert(1)>", "invoiceU+202Efdp.exe"] {
        assert!(text.contains(shown), "{shown:?} shows as text");
    }
    let links = script(&b, "return [...document.links].filter(a => !a.href.startsWith(location.origin)).length;").await;
    assert_eq!(links, json!(0), "no link leaves the registry (a javascript: label is no link)");
    shoot(&b, "hostile-light").await;
    // A referrer, from its subject's page, links back.
    let signature = b.find(Locator::Css("ul.referrers a")).await.unwrap();
    let referrer_path = signature.attr("href").await.unwrap().unwrap();
    click_to_load(&b, signature).await;
    let text = b.find(Locator::Css("main")).await.unwrap().text().await.unwrap();
    assert!(text.contains("Refers to") && text.contains(image.as_str()), "{text}");
    assert_clean(&b, "referrer").await;
    shoot(&b, "referrer-light").await;

    // Delete a tag, through the confirmation page.
    b.goto(&format!("{base}/ui/r/demo/multi?sort=name")).await.unwrap();
    let delete = b.find(Locator::Css("a[href='/ui/r/demo/multi/-/delete?tag=only-arm64']")).await.unwrap();
    click_to_load(&b, delete).await;
    assert_clean(&b, "confirm").await;
    shoot(&b, "delete-light").await;
    click_to_load(&b, b.find(Locator::Css("form.confirm button")).await.unwrap()).await;
    assert_eq!(b.current_url().await.unwrap().path(), "/ui/r/demo/multi");
    assert!(b.find(Locator::Css("a[href='/ui/r/demo/multi/-/m/only-arm64']")).await.is_err(), "the tag is gone");
    let api = app.client.get(app.url("/v2/demo/multi/manifests/only-arm64")).basic_auth("bob", Some("bob-password"));
    assert_eq!(api.send().await.unwrap().status(), StatusCode::NOT_FOUND);
    let api = app.client.get(app.url("/v2/demo/multi/manifests/only-amd64")).basic_auth("bob", Some("bob-password"));
    assert_eq!(api.send().await.unwrap().status(), StatusCode::OK, "only that tag");

    b.goto(&format!("{base}/ui/usage?ns=demo")).await.unwrap();
    assert_clean(&b, "usage").await;
    shoot(&b, "usage-light").await;

    // Every page again in the dark theme, chosen with the toggle (and kept across pages).
    let background = async |b: &Client| script(b, "return getComputedStyle(document.body).backgroundColor;").await;
    let light = background(&b).await;
    b.find(Locator::Css("button[data-theme-toggle]")).await.unwrap().click().await.unwrap();
    assert_ne!(background(&b).await, light, "the toggle changes the theme");
    let pages = [
        ("catalog", "/ui/".to_owned()),
        ("repository", "/ui/r/demo/multi".to_owned()),
        ("index", "/ui/r/demo/multi/-/m/latest".to_owned()),
        ("manifest", format!("/ui/r/demo/multi/-/m/{}", index[1])),
        ("hostile", "/ui/r/demo/hostile/-/m/v1".to_owned()),
        ("referrer", referrer_path.clone()),
        ("delete", "/ui/r/demo/multi/-/delete?tag=latest".to_owned()),
        ("usage", "/ui/usage?ns=demo".to_owned()),
    ];
    for (name, path) in &pages {
        b.goto(&format!("{base}{path}")).await.unwrap();
        assert_ne!(background(&b).await, light, "{name}: dark");
        shoot(&b, &format!("{name}-dark")).await;
    }
    // A phone-sized screen: nothing wider than the screen, in either theme.
    b.set_window_size(390, 844).await.unwrap();
    for (name, path) in &pages {
        b.goto(&format!("{base}{path}")).await.unwrap();
        let overflow =
            script(&b, "return document.documentElement.scrollWidth - document.documentElement.clientWidth;").await;
        assert!(overflow.as_i64().unwrap() <= 0, "{name}: {overflow} pixels wider than a phone");
        shoot(&b, &format!("{name}-phone-dark")).await;
    }
    script(&b, "localStorage.setItem('berth-theme', 'light');").await;
    b.goto(&format!("{base}/ui/r/demo/multi")).await.unwrap();
    assert_eq!(background(&b).await, light);
    shoot(&b, "repository-phone-light").await;
    b.set_window_size(1280, 900).await.unwrap();

    // bob, who may pull only, sees no delete control.
    click_to_load(&b, b.find(Locator::Css("form.signout button")).await.unwrap()).await;
    assert!(b.get_named_cookie("berth_session").await.is_err(), "signed out");
    script(&b, "localStorage.setItem('berth-theme', 'dark');").await;
    follow(&b, "Sign in").await;
    assert_ne!(background(&b).await, light);
    shoot(&b, "login-dark").await;
    sign_in(&b, "bob", "bob-password").await;
    b.find(Locator::Css("form.signout")).await.unwrap();
    for path in ["/ui/r/demo/multi", "/ui/r/demo/multi/-/m/latest"] {
        b.goto(&format!("{base}{path}")).await.unwrap();
        assert!(b.find_all(Locator::Css("a.danger, form.confirm")).await.unwrap().is_empty(), "{path}");
    }
    b.goto(&format!("{base}/ui/r/demo/multi/-/delete?tag=latest")).await.unwrap();
    assert!(b.find(Locator::Css("form.confirm")).await.is_err());
    b.close().await.unwrap();
}
