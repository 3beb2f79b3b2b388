//! The web console in headless Chromium: the page loads without a token and shows no data;
//! an operator signs in through the emulator's issuer (code + PKCE) in one click, finds a
//! failed exchange in the list, recovers it from its page and sees it Completed; a
//! read-only user sees no recover action. Screenshots of each page go to
//! `target/console-screenshots/` for review.

use fantoccini::elements::Element;
use fantoccini::{Client as WebDriver, ClientBuilder, Locator};
use handoff_e2e::browser::{screenshot_dir, ChromeDriver, CHROMIUM};
use handoff_e2e::{gateway, unique_code, ExternalSystem};
use serde_json::json;
use std::time::{Duration, Instant};

async fn browser(driver: &ChromeDriver) -> WebDriver {
    // As the machine notes say: no sandbox as root, and no background calls to the internet.
    let args = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
    ];
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), json!({"binary": CHROMIUM, "args": args}));
    ClientBuilder::rustls()
        .expect("a WebDriver client")
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// Waits for the element `css` (the page renders asynchronously).
async fn element(page: &WebDriver, css: &str) -> Element {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(found) = page.find(Locator::Css(css)).await {
            return found;
        }
        if Instant::now() > deadline {
            let url = page.current_url().await.map(|u| u.to_string()).unwrap_or_default();
            let body = match page.find(Locator::Css("body")).await {
                Ok(body) => body.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            panic!("no {css} on {url}; the page reads:\n{body}");
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// Clicks `css` once it is there; a page that re-rendered under the click is tried again.
async fn click(page: &WebDriver, css: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match element(page, css).await.click().await {
            Ok(()) => return,
            Err(e) if Instant::now() < deadline => {
                eprintln!("clicking {css} again: {}", e.to_string().lines().next().unwrap_or_default());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("clicking {css}: {e}"),
        }
    }
}

/// Waits until the text of `css` is `expected`.
async fn text_becomes(page: &WebDriver, css: &str, expected: &str, within: Duration) {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(found) = page.find(Locator::Css(css)).await {
            last = found.text().await.unwrap_or_default();
            if last == expected {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{css} reads '{last}', not '{expected}'");
}

async fn screenshot(page: &WebDriver, name: &str) {
    let path = screenshot_dir().join(format!("{name}.png"));
    let png = page.screenshot().await.unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
    std::fs::write(&path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_signs_in_finds_a_failed_exchange_and_recovers_it_and_a_reader_cannot() {
    let gw = gateway();
    let target = ExternalSystem::start(200, "{}").await;
    target.script([(422, r#"{"message": "postcode missing"}"#), (422, r#"{"message": "postcode missing"}"#)]);
    let code = unique_code("CONSOLE");
    gw.create_integration(&json!({"code": code, "version": 1, "steps": [{"name": "send", "type": "delivery",
        "retry": {"maxAttempts": 1},
        "destinations": [{"kind": "rest", "request": {"method": "POST", "url": format!("{}/in", target.url)}}]}]}))
        .await;
    let mut failed = Vec::new();
    for _ in 0..2 {
        let id = gw.invoke(&json!({"integrationCode": code, "parameters": {"region": "north"}})).await;
        assert_eq!(gw.wait_final(&id).await["status"], "Failed");
        failed.push(id);
    }

    let started = Instant::now();
    let driver = tokio::task::spawn_blocking(ChromeDriver::start).await.expect("join").expect("chromedriver");
    let page = browser(&driver).await;
    let outcome = async {
        // Without a token: the sign-in, and no data.
        page.goto(&format!("{}/console", gw.api)).await.expect("open the console");
        let sign_in = element(&page, "#signin-button").await;
        assert!(sign_in.is_displayed().await.expect("visible"));
        assert!(page.find_all(Locator::Css("tr[data-exchange-id]")).await.expect("query").is_empty());
        screenshot(&page, "0-sign-in").await;

        // One click: the emulator's issuer signs the developer in and sends the code back.
        click(&page, "#signin-button").await;
        let who = element(&page, "#signed-in-as").await;
        assert!(who.text().await.expect("text").starts_with("developer"), "signed in as the developer");

        // The list, filtered to Failed, shows the exchange; its page offers the recovery.
        page.goto(&format!("{}/console#/exchanges", gw.api)).await.expect("exchanges");
        click(&page, &format!("#filter-integration option[value='{code}']")).await;
        click(&page, "#filter-status option[value='Failed']").await;
        let row = format!("tr[data-exchange-id='{}'][data-status='Failed']", failed[0]);
        element(&page, &row).await;
        screenshot(&page, "1-exchanges").await;
        click(&page, &row).await;
        text_becomes(&page, "#exchange-status", "Failed", Duration::from_secs(20)).await;
        screenshot(&page, "2-exchange-failed").await;
        click(&page, "#recover").await;
        text_becomes(&page, "#exchange-status", "Completed", Duration::from_secs(60)).await;
        screenshot(&page, "3-exchange-completed").await;

        // The other pages render for review.
        for (hash, name, css) in [
            ("#/integrations", "4-integrations", format!("tr[data-code='{code}']")),
            (&format!("#/integrations/{code}") as &str, "5-integration", "#endpoint-status".to_string()),
            ("#/errors", "6-errors", "h1".to_string()),
            ("#/mappings/provider-status", "7-mappings", "#mapping-document".to_string()),
            ("#/health", "8-health", "h1".to_string()),
        ] {
            page.goto(&format!("{}/console{hash}", gw.api)).await.expect("page");
            element(&page, &css).await;
            screenshot(&page, name).await;
        }

        // A reader signs in and sees the failed exchange without any action to take.
        click(&page, "#who button").await;
        click(&page, "#signin-viewer").await;
        let who = element(&page, "#signed-in-as").await;
        assert!(who.text().await.expect("text").starts_with("viewer (read)"), "signed in read-only");
        page.goto(&format!("{}/console#/exchanges/{}", gw.api, failed[1])).await.expect("exchange");
        text_becomes(&page, "#exchange-status", "Failed", Duration::from_secs(20)).await;
        assert!(page.find_all(Locator::Css("#recover, #recover-onto, button.retry")).await.expect("query").is_empty());
        screenshot(&page, "9-exchange-read-only").await;
        page.goto(&format!("{}/console#/exchanges", gw.api)).await.expect("exchanges");
        element(&page, &format!("tr[data-exchange-id='{}']", failed[1])).await;
        assert!(page.find_all(Locator::Css("#recover-selected, input.select")).await.expect("query").is_empty());
    }
    .await;
    page.close().await.expect("close the browser");
    eprintln!("console browser test: {:.1} s", started.elapsed().as_secs_f64());
    outcome
}
