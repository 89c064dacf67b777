//! A real aws-sdk-rust client used by the integration tests: resolves
//! credentials with the provider named in argv[1] (`default`, `ecs`, `imds`)
//! and prints the caller identity reported by the STS at argv[2].

use aws_config::BehaviorVersion;
use aws_credential_types::provider::SharedCredentialsProvider;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let provider = args.next().unwrap_or_else(|| "default".into());
    let endpoint = args.next().expect("usage: sdk_probe PROVIDER STS_URL");
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).endpoint_url(&endpoint);
    match provider.as_str() {
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
    let sts = aws_sdk_sts::Client::new(&conf);
    match sts.get_caller_identity().send().await {
        Ok(out) => println!("{}", serde_json::json!({ "arn": out.arn() })),
        Err(e) => {
            eprintln!(
                "{}",
                aws_smithy_types::error::display::DisplayErrorContext(&e)
            );
            std::process::exit(1);
        }
    }
}
