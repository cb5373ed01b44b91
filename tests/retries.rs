//! Protects the answers to retries: a batch of retried commands — in any order, near each
//! other in the log or far apart, mixed with new commands — gets for each retry exactly the
//! records its original produced, marked as a replay. (Retries are read back from the log
//! together, in one pass where their records are close.)

mod support;

use support::{meta, Rng, TestEngine};
use tally::domain::{AwardRequest, Command};

fn award(n: u64) -> Command {
    Command::Award {
        account: format!("p{}", n % 7),
        source: AwardRequest::Promotion {
            points: 1 + n % 11,
            promotion_id: "retry".into(),
            external_reward_id: format!("r{n}"),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_retries_gets_each_original_result() {
    let engine = TestEngine::start();
    let handle = engine.handle();
    let opens = (0..7)
        .map(|a| {
            (
                meta(&format!("open-{a}")),
                Command::OpenAccount {
                    account: format!("p{a}"),
                },
            )
        })
        .collect();
    handle.submit_batch(opens).await.unwrap();
    // 12,000 awards in batches of varied size, so their records sit in many frames.
    let mut originals = Vec::new();
    let mut n = 0;
    for size in [1u64, 500, 3000, 17, 8000, 482] {
        let batch: Vec<_> = (n..n + size).map(|i| (meta(&format!("a{i}")), award(i))).collect();
        for result in handle.submit_batch(batch).await.unwrap() {
            originals.push(result.unwrap().records);
        }
        n += size;
    }
    let mut rng = Rng(42);
    for _ in 0..5 {
        // A random sample of retries, shuffled, with a new command among them.
        let mut picks: Vec<u64> = (0..300).map(|_| rng.below(n)).collect();
        picks.push(u64::MAX);
        let batch: Vec<_> = picks
            .iter()
            .map(|&i| match i {
                u64::MAX => (meta(&format!("new-{}", rng.next())), award(rng.next())),
                i => (meta(&format!("a{i}")), award(i)),
            })
            .collect();
        let results = handle.submit_batch(batch).await.unwrap();
        for (&i, result) in picks.iter().zip(results) {
            let receipt = result.unwrap();
            if i == u64::MAX {
                assert!(!receipt.replayed);
                continue;
            }
            assert!(receipt.replayed, "award {i} is a retry");
            assert_eq!(receipt.records, originals[i as usize], "award {i}");
        }
    }
}
