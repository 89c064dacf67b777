//! The aws-sdk-rust client of the compatibility suite (tests/compat): one
//! long-lived STS client whose credentials come from the provider named in
//! argv[1] (`default`, `ecs`, `imds`), calling GetCallerIdentity against the
//! STS at argv[2] every argv[3] seconds for at most argv[4] seconds.
//!
//! Each call prints one JSON line: when it started, whether it worked, the
//! ARN, and the access key id the request was really signed with (read off
//! the Authorization header), so the suite can tell which credentials the
//! SDK's own cache handed out and whether they had expired.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_config::BehaviorVersion;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

/// Remembers the access key id of the last signed request.
#[derive(Debug, Clone, Default)]
struct SignedKey(Arc<Mutex<Option<String>>>);

impl Intercept for SignedKey {
    fn name(&self) -> &'static str {
        "SignedKey"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // "AWS4-HMAC-SHA256 Credential=ASIA.../20261203/us-east-1/sts/..."
        let key = context
            .request()
            .headers()
            .get("authorization")
            .and_then(|v| v.split("Credential=").nth(1))
            .and_then(|v| v.split('/').next())
            .map(str::to_string);
        *self.0.lock().unwrap() = key;
        Ok(())
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 4 {
        eprintln!("usage: compat_probe default|ecs|imds STS_URL INTERVAL_SECS MAX_SECS");
        std::process::exit(64);
    }
    let interval = Duration::from_secs_f64(args[2].parse().expect("interval in seconds"));
    let max = Duration::from_secs_f64(args[3].parse().expect("run time in seconds"));

    let mut loader = aws_config::defaults(BehaviorVersion::latest()).endpoint_url(&args[1]);
    match args[0].as_str() {
        "default" => {}
        "ecs" => {
            let p = aws_config::ecs::EcsCredentialsProvider::builder().build();
            loader = loader.credentials_provider(SharedCredentialsProvider::new(p));
        }
        "imds" => {
            let p = aws_config::imds::credentials::ImdsCredentialsProvider::builder().build();
            loader = loader.credentials_provider(SharedCredentialsProvider::new(p));
        }
        other => panic!("unknown provider {other}"),
    }
    let conf = loader.load().await;
    let signed = SignedKey::default();
    let sts_conf = aws_sdk_sts::config::Builder::from(&conf)
        .interceptor(signed.clone())
        .build();
    let sts = aws_sdk_sts::Client::from_conf(sts_conf);

    // Bounded by time and, as a second guard, by count.
    let start = Instant::now();
    let most = (max.as_secs_f64() / interval.as_secs_f64().max(0.05)) as u64 + 1;
    for _ in 0..most {
        if start.elapsed() >= max {
            break;
        }
        let t = now();
        *signed.0.lock().unwrap() = None;
        let line = match sts.get_caller_identity().send().await {
            Ok(out) => serde_json::json!({
                "t": t, "ok": true, "arn": out.arn(), "key": *signed.0.lock().unwrap(),
            }),
            Err(e) => serde_json::json!({
                "t": t, "ok": false, "key": *signed.0.lock().unwrap(),
                "err": aws_smithy_types::error::display::DisplayErrorContext(&e).to_string(),
            }),
        };
        println!("{line}");
        tokio::time::sleep(interval).await;
    }
}
