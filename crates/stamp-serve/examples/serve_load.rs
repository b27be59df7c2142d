//! Load generator for benches/serve.sh: N client threads send signed
//! DescribeImportImageTasks requests to a `stamp serve` for a number of seconds and report the
//! throughput and the latency percentiles.
//!
//! usage: serve_load URL ACCESS_KEY SECRET CLIENTS SECONDS

use std::time::{Duration, Instant};

use stamp_aws::config::{AwsConfig, Credentials};
use stamp_aws::ec2::{self, DescribeImportImageTasksRequest};
use stamp_aws::http::Client;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, key, secret, clients, seconds] = &args[..] else {
        eprintln!("usage: serve_load URL ACCESS_KEY SECRET CLIENTS SECONDS");
        std::process::exit(2);
    };
    let clients: usize = clients.parse().unwrap_or(200);
    let seconds: u64 = seconds.parse().unwrap_or(60);
    let config = AwsConfig::new(
        "us-east-1",
        Credentials {
            access_key_id: key.clone(),
            secret_access_key: secret.clone(),
            session_token: None,
        },
    )
    .with_endpoint(url);
    let end = Instant::now() + Duration::from_secs(seconds);
    let (latencies, errors) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let config = config.clone();
                s.spawn(move || {
                    let client = Client::new(&config);
                    let mut lat = Vec::new();
                    let mut errors = 0u64;
                    while Instant::now() < end {
                        let t = Instant::now();
                        match ec2::call(&client, &DescribeImportImageTasksRequest::default()) {
                            Ok(_) => lat.push(t.elapsed()),
                            Err(_) => errors += 1,
                        }
                    }
                    (lat, errors)
                })
            })
            .collect();
        let mut all = Vec::new();
        let mut errors = 0;
        for h in handles {
            if let Ok((l, e)) = h.join() {
                all.extend(l);
                errors += e;
            }
        }
        (all, errors)
    });
    let mut l = latencies;
    l.sort();
    let pct = |p: f64| -> f64 {
        if l.is_empty() {
            return f64::NAN;
        }
        let i = ((l.len() as f64 - 1.0) * p).round() as usize;
        l[i].as_secs_f64() * 1000.0
    };
    println!(
        "clients {clients}  seconds {seconds}  requests {}  errors {errors}  throughput {:.0}/s  p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        l.len(),
        l.len() as f64 / seconds as f64,
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
}
