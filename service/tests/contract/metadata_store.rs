//! The `MetadataStore` contract.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use berth::metadata::{
    BlobRecord, Collectable, DeleteBytes, MetadataError, MetadataStore, NameMatch, NewManifest, Page, PutManifest,
    QuotaExceeded, TagOrder,
};
use berth::oci::{Algorithm, Digest, Reference, RepoName, Tag};

fn repo(name: &str) -> RepoName {
    name.parse().unwrap()
}

fn tag(name: &str) -> Tag {
    name.parse().unwrap()
}

fn digest(seed: &str) -> Digest {
    Digest::compute(Algorithm::Sha256, seed.as_bytes())
}

fn blob(size: u64) -> BlobRecord {
    BlobRecord { size, location: None }
}

fn manifest(repository: &str, payload: &str, blobs: Vec<(Digest, u64)>) -> NewManifest {
    NewManifest {
        repository: repo(repository),
        digest: digest(payload),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        payload: payload.as_bytes().to_vec(),
        artifact_type: None,
        subject: None,
        annotations: None,
        blobs,
        manifests: Vec::new(),
        lazy: false,
    }
}

pub async fn blob_links_are_per_repository(store: Arc<dyn MetadataStore>) {
    let (a, b, d) = (repo("a"), repo("b"), digest("blob"));
    assert_eq!(store.blob_in_repository(&a, &d).await.unwrap(), None);
    assert_eq!(store.blob(&d).await.unwrap(), None);
    let stored = BlobRecord { size: 10, location: Some("objects/x".into()) };
    store.link_blob(&a, &d, &stored).await.unwrap();
    // The first record of a digest stays.
    store.link_blob(&a, &d, &blob(10)).await.unwrap();
    assert_eq!(store.blob_in_repository(&a, &d).await.unwrap(), Some(stored.clone()));
    assert_eq!(store.blob(&d).await.unwrap(), Some(stored));
    assert_eq!(store.blob_in_repository(&b, &d).await.unwrap(), None);
    assert!(store.unlink_blob(&a, &d).await.unwrap());
    assert!(!store.unlink_blob(&a, &d).await.unwrap());
    assert_eq!(store.blob_in_repository(&a, &d).await.unwrap(), None);
    store.ping().await.unwrap();
}

pub async fn mounts_need_the_blob_in_the_source(store: Arc<dyn MetadataStore>) {
    let (a, b, d) = (repo("src"), repo("dst"), digest("layer"));
    assert_eq!(store.mount_blob(&a, &b, &d).await.unwrap(), None);
    assert_eq!(store.blob_in_repository(&b, &d).await.unwrap(), None);
    store.link_blob(&a, &d, &blob(7)).await.unwrap();
    assert_eq!(store.mount_blob(&a, &b, &d).await.unwrap(), Some(blob(7)));
    assert_eq!(store.blob_in_repository(&b, &d).await.unwrap(), Some(blob(7)));
}

pub async fn a_manifest_with_missing_references_stores_nothing(store: Arc<dyn MetadataStore>) {
    let r = repo("m");
    let (present, absent) = (digest("present"), digest("absent"));
    store.link_blob(&r, &present, &blob(5)).await.unwrap();
    let m = manifest("m", "broken", vec![(present.clone(), 5), (absent.clone(), 3)]);
    assert_eq!(store.put_manifest(&m, &[tag("t")], &[]).await.unwrap(), PutManifest::Missing(vec![absent]));
    assert_eq!(store.get_manifest(&r, &Reference::Digest(m.digest.clone()), false).await.unwrap(), None);
    assert_eq!(store.get_manifest(&r, &Reference::Tag(tag("t")), false).await.unwrap(), None);
    let wrong = manifest("m", "wrong size", vec![(present.clone(), 6)]);
    assert_eq!(store.put_manifest(&wrong, &[], &[]).await.unwrap(), PutManifest::WrongSize(vec![present]));
    let child = manifest("m", "index", Vec::new());
    let mut index = manifest("m", "index of missing", Vec::new());
    index.manifests = vec![(child.digest.clone(), 5)];
    assert!(matches!(store.put_manifest(&index, &[], &[]).await.unwrap(), PutManifest::Missing(_)));
    store.put_manifest(&child, &[], &[]).await.unwrap();
    assert_eq!(store.put_manifest(&index, &[], &[]).await.unwrap(), PutManifest::Stored);
}

pub async fn manifests_and_tags(store: Arc<dyn MetadataStore>) {
    let r = repo("lib/app");
    let layer = digest("layer");
    store.link_blob(&r, &layer, &blob(5)).await.unwrap();
    let first = manifest("lib/app", "first", vec![(layer.clone(), 5)]);
    let second = manifest("lib/app", "second", vec![(layer.clone(), 5)]);
    assert_eq!(store.put_manifest(&first, &[tag("v1"), tag("latest")], &[]).await.unwrap(), PutManifest::Stored);
    assert_eq!(store.put_manifest(&first, &[], &[]).await.unwrap(), PutManifest::Stored, "idempotent");
    let by_tag = store.get_manifest(&r, &Reference::Tag(tag("latest")), true).await.unwrap().unwrap();
    assert_eq!(by_tag.digest, first.digest);
    assert_eq!(by_tag.payload.as_deref(), Some(&b"first"[..]));
    assert_eq!(by_tag.size, 5);
    let head = store.get_manifest(&r, &Reference::Digest(first.digest.clone()), false).await.unwrap().unwrap();
    assert_eq!((head.payload, head.media_type.as_str()), (None, "application/vnd.oci.image.manifest.v1+json"));
    // Moving a tag leaves the other tag and the old manifest alone.
    store.put_manifest(&second, &[tag("latest")], &[]).await.unwrap();
    let latest = store.get_manifest(&r, &Reference::Tag(tag("latest")), false).await.unwrap().unwrap();
    assert_eq!(latest.digest, second.digest);
    assert_eq!(store.get_manifest(&r, &Reference::Tag(tag("v1")), false).await.unwrap().unwrap().digest, first.digest);
    assert_eq!(store.get_manifest(&repo("other"), &Reference::Tag(tag("v1")), false).await.unwrap(), None);
    // Deleting a tag keeps the manifest; deleting a manifest takes its tags.
    assert!(store.delete_tag(&r, &tag("v1")).await.unwrap());
    assert!(!store.delete_tag(&r, &tag("v1")).await.unwrap());
    assert!(store.get_manifest(&r, &Reference::Digest(first.digest.clone()), false).await.unwrap().is_some());
    assert!(store.delete_manifest(&r, &second.digest).await.unwrap());
    assert!(!store.delete_manifest(&r, &second.digest).await.unwrap());
    assert_eq!(store.get_manifest(&r, &Reference::Tag(tag("latest")), false).await.unwrap(), None);
}

pub async fn listings_are_sorted_and_paged(store: Arc<dyn MetadataStore>) {
    let r = repo("t");
    assert_eq!(store.list_tags(&r, None, 10).await.unwrap(), None);
    let m = manifest("t", "m", Vec::new());
    let tags: Vec<Tag> = ["b", "a", "B", "_", "0", "a-1"].iter().map(|t| tag(t)).collect();
    store.put_manifest(&m, &tags, &[]).await.unwrap();
    let page = |items: &[&str], more| Page { items: items.iter().map(|s| s.to_string()).collect(), more };
    assert_eq!(store.list_tags(&r, None, 100).await.unwrap().unwrap(), page(&["0", "B", "_", "a", "a-1", "b"], false));
    assert_eq!(store.list_tags(&r, None, 2).await.unwrap().unwrap(), page(&["0", "B"], true));
    assert_eq!(store.list_tags(&r, Some("_"), 2).await.unwrap().unwrap(), page(&["a", "a-1"], true));
    assert_eq!(store.list_tags(&r, Some("a-1"), 2).await.unwrap().unwrap(), page(&["b"], false));
    for name in ["z", "t/x", "a"] {
        store.link_blob(&repo(name), &digest("x"), &blob(1)).await.unwrap();
    }
    assert_eq!(store.list_repositories(None, 3).await.unwrap(), page(&["a", "t", "t/x"], true));
    assert_eq!(store.list_repositories(Some("t/x"), 3).await.unwrap(), page(&["z"], false));
}

pub async fn referrers_by_subject_and_artifact_type(store: Arc<dyn MetadataStore>) {
    let r = repo("refs");
    let subject = digest("subject");
    let mut sbom = manifest("refs", "sbom", Vec::new());
    sbom.subject = Some(subject.clone());
    sbom.artifact_type = Some("application/sbom".into());
    sbom.annotations = Some(r#"{"k":"v"}"#.into());
    let mut sig = manifest("refs", "sig", Vec::new());
    sig.subject = Some(subject.clone());
    sig.artifact_type = Some("application/sig".into());
    store.put_manifest(&sbom, &[], &[]).await.unwrap();
    store.put_manifest(&sig, &[], &[]).await.unwrap();
    store.put_manifest(&manifest("refs", "unrelated", Vec::new()), &[], &[]).await.unwrap();
    let all = store.referrers(&r, &subject, None).await.unwrap();
    assert_eq!(all.len(), 2);
    let only = store.referrers(&r, &subject, Some("application/sbom")).await.unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].digest, sbom.digest);
    assert_eq!(only[0].annotations.as_deref(), Some(r#"{"k":"v"}"#));
    assert_eq!(only[0].size, 4);
    assert!(store.referrers(&repo("elsewhere"), &subject, None).await.unwrap().is_empty());
}

async fn collectable(store: &dyn MetadataStore, cutoff: SystemTime) -> Vec<Digest> {
    let mut found = Vec::new();
    let mut after = None;
    // Pages of one, to check the paging too.
    while let Some(Collectable { digest, .. }) =
        store.collectable_blobs(cutoff, after.as_ref(), 1).await.unwrap().into_iter().next()
    {
        found.push(digest.clone());
        after = Some(digest);
    }
    found
}

fn sorted(mut digests: Vec<Digest>) -> Vec<Digest> {
    digests.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    digests
}

pub async fn blobs_nothing_references_are_collected_and_nothing_else(store: Arc<dyn MetadataStore>) {
    let (r, other) = (repo("gc/r"), repo("gc/other"));
    let (used, loose, unlinked, relinked) = (digest("used"), digest("loose"), digest("unlinked"), digest("again"));
    for d in [&used, &loose, &unlinked, &relinked] {
        store.link_blob(&r, d, &blob(4)).await.unwrap();
    }
    assert!(store.unlink_blob(&r, &unlinked).await.unwrap());
    let m = manifest("gc/r", "uses", vec![(used.clone(), 4)]);
    store.put_manifest(&m, &[tag("t")], &[]).await.unwrap();

    // Within the grace time nothing goes; past it, what no manifest references.
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    assert_eq!(collectable(&*store, hour_ago).await, Vec::<Digest>::new());
    tokio::time::sleep(Duration::from_millis(5)).await;
    let past = SystemTime::now();
    assert_eq!(collectable(&*store, past).await, sorted(vec![loose.clone(), unlinked.clone(), relinked.clone()]));
    assert_eq!(store.begin_blob_removal(&used, past).await.unwrap(), None);

    // A link made after the cutoff keeps the blob: a new one, or one made again.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(store.link_stored_blob(&other, &unlinked, 4).await.unwrap(), Some(blob(4)));
    assert_eq!(store.begin_blob_removal(&unlinked, past).await.unwrap(), None);
    store.link_blob(&r, &relinked, &blob(4)).await.unwrap();
    assert_eq!(store.begin_blob_removal(&relinked, past).await.unwrap(), None);
    assert_eq!(collectable(&*store, past).await, vec![loose.clone()]);
    assert_eq!(store.link_stored_blob(&other, &unlinked, 5).await.unwrap(), None);

    // Removal unlinks it everywhere at once, and until it finishes nothing can link it again.
    assert_eq!(store.begin_blob_removal(&loose, past).await.unwrap(), Some(blob(4)));
    assert_eq!(store.blob_in_repository(&r, &loose).await.unwrap(), None);
    assert_eq!(store.blob(&loose).await.unwrap(), None);
    let refused = store.link_stored_blob(&other, &loose, 4).await;
    assert!(matches!(refused, Err(MetadataError::BlobBeingRemoved(ref d)) if *d == loose), "{refused:?}");
    let refused = store.link_blob(&other, &loose, &blob(4)).await;
    assert!(matches!(refused, Err(MetadataError::BlobBeingRemoved(ref d)) if *d == loose), "{refused:?}");
    assert_eq!(store.blob_in_repository(&other, &loose).await.unwrap(), None);
    assert_eq!(store.mount_blob(&r, &other, &loose).await.unwrap(), None);
    let late = manifest("gc/r", "late", vec![(loose.clone(), 4)]);
    assert_eq!(store.put_manifest(&late, &[], &[]).await.unwrap(), PutManifest::Missing(vec![loose.clone()]));
    // A removal cut short is found again, and can be begun again.
    assert!(collectable(&*store, hour_ago).await.contains(&loose));
    assert_eq!(store.begin_blob_removal(&loose, hour_ago).await.unwrap(), Some(blob(4)));
    store.finish_blob_removal(&loose).await.unwrap();
    assert!(!collectable(&*store, SystemTime::now()).await.contains(&loose));
    assert_eq!(store.link_stored_blob(&other, &loose, 4).await.unwrap(), None);
    // Stored again after its removal, it is a new blob.
    store.link_blob(&other, &loose, &blob(4)).await.unwrap();
    assert_eq!(store.blob_in_repository(&other, &loose).await.unwrap(), Some(blob(4)));

    // Once its last manifest is deleted, a layer is collectable.
    assert!(store.delete_manifest(&r, &m.digest).await.unwrap());
    tokio::time::sleep(Duration::from_millis(5)).await;
    let now = SystemTime::now();
    assert!(collectable(&*store, now).await.contains(&used));
    assert_eq!(store.begin_blob_removal(&used, now).await.unwrap(), Some(blob(4)));
    store.finish_blob_removal(&used).await.unwrap();
    assert_eq!(store.blob_in_repository(&r, &used).await.unwrap(), None);
}

pub async fn untagged_manifests_nothing_keeps_are_removed_and_nothing_else(store: Arc<dyn MetadataStore>) {
    let r = repo("gc/m");
    let layer = digest("layer");
    store.link_blob(&r, &layer, &blob(4)).await.unwrap();
    let image = |payload: &str| manifest("gc/m", payload, vec![(layer.clone(), 4)]);
    let index = |payload: &str, listed: &NewManifest| NewManifest {
        media_type: "application/vnd.oci.image.index.v1+json".into(),
        blobs: Vec::new(),
        manifests: vec![(listed.digest.clone(), listed.payload.len() as u64)],
        ..manifest("gc/m", payload, Vec::new())
    };
    let referrer = |payload: &str, subject: &NewManifest| NewManifest {
        subject: Some(subject.digest.clone()),
        ..manifest("gc/m", payload, Vec::new())
    };
    let put = async |m: &NewManifest, tags: &[&str]| {
        let tags: Vec<Tag> = tags.iter().map(|t| tag(t)).collect();
        assert_eq!(store.put_manifest(m, &tags, &[]).await.unwrap(), PutManifest::Stored);
    };
    // v1 moves from `old` to `current`; a tagged index lists `child`; an untagged index lists
    // `orphan`; both images have a signature.
    let (old, current, child, orphan) = (image("old"), image("current"), image("child"), image("orphan"));
    let (multi, old_index) = (index("multi", &child), index("old index", &orphan));
    let (old_sig, current_sig) = (referrer("old sig", &old), referrer("current sig", &current));
    put(&old, &["v1"]).await;
    put(&current, &["v1"]).await;
    for m in [&child, &orphan, &old_index, &old_sig, &current_sig] {
        put(m, &[]).await;
    }
    put(&multi, &["multi"]).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let cutoff = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let recent = image("recent");
    put(&recent, &[]).await;

    let lease = store.acquire_lease("gc", "contract", Duration::from_secs(60), false).await.unwrap().unwrap();
    // Within the grace time nothing goes; past it, what no tag keeps, indexes before what they
    // list and subjects before their referrers.
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    assert_eq!(store.unkept_manifests(&r, Some(hour_ago), &[]).await.unwrap(), Vec::<Digest>::new());
    let order = store.unkept_manifests(&r, Some(cutoff), &[]).await.unwrap();
    assert_eq!(
        sorted(order.clone()),
        sorted(vec![old.digest.clone(), old_sig.digest.clone(), old_index.digest.clone(), orphan.digest.clone()])
    );
    let at = |m: &NewManifest| order.iter().position(|d| *d == m.digest).unwrap();
    assert!(at(&old) < at(&old_sig) && at(&old_index) < at(&orphan), "{order:?}");
    assert_eq!(store.unkept_manifests(&repo("gc/none"), Some(cutoff), &[]).await.unwrap(), Vec::<Digest>::new());

    // Checked again at removal: a referrer whose subject is still there stays, so does a
    // manifest an index lists, and one pushed again since the listing.
    assert!(!store.remove_unkept_manifest(&lease, &r, &old_sig.digest, cutoff).await.unwrap());
    assert!(!store.remove_unkept_manifest(&lease, &r, &orphan.digest, cutoff).await.unwrap());
    put(&old_index, &[]).await;
    assert!(!store.remove_unkept_manifest(&lease, &r, &old_index.digest, cutoff).await.unwrap());
    assert!(!store.remove_unkept_manifest(&lease, &r, &orphan.digest, cutoff).await.unwrap());
    assert!(!store.remove_unkept_manifest(&lease, &r, &current.digest, cutoff).await.unwrap());
    assert!(!store.remove_unkept_manifest(&lease, &r, &recent.digest, cutoff).await.unwrap());
    assert!(!store.remove_unkept_manifest(&lease, &r, &digest("never pushed"), cutoff).await.unwrap());
    assert_eq!(
        store.unkept_manifests(&r, Some(cutoff), &[]).await.unwrap(),
        vec![old.digest.clone(), old_sig.digest.clone()]
    );

    // In order, each goes.
    assert!(store.remove_unkept_manifest(&lease, &r, &old.digest, cutoff).await.unwrap());
    assert!(store.remove_unkept_manifest(&lease, &r, &old_sig.digest, cutoff).await.unwrap());
    assert!(!store.remove_unkept_manifest(&lease, &r, &old.digest, cutoff).await.unwrap());
    for gone in [&old, &old_sig] {
        assert_eq!(store.get_manifest(&r, &Reference::Digest(gone.digest.clone()), false).await.unwrap(), None);
    }
    for kept in [&current, &child, &multi, &current_sig, &recent, &old_index, &orphan] {
        assert!(store.get_manifest(&r, &Reference::Digest(kept.digest.clone()), false).await.unwrap().is_some());
    }
    assert_eq!(store.referrers(&r, &current.digest, None).await.unwrap().len(), 1);
    assert_eq!(
        store.get_manifest(&r, &Reference::Tag(tag("v1")), false).await.unwrap().unwrap().digest,
        current.digest
    );
    // The layer the removed image shared with the kept ones stays referenced.
    assert_eq!(collectable(&*store, SystemTime::now()).await, Vec::<Digest>::new());
}

pub async fn the_lease_fences_its_holder_once_taken_over(store: Arc<dyn MetadataStore>) {
    let ttl = Duration::from_millis(400);
    let a = store.acquire_lease("gc", "a", ttl, true).await.unwrap().expect("free at first");
    assert_eq!(store.acquire_lease("gc", "b", ttl, false).await.unwrap(), None, "held");
    store.renew_lease(&a).await.unwrap();
    // Each fenced transaction renews it too.
    let (r, loose) = (repo("lease/r"), digest("lease loose"));
    store.link_blob(&r, &loose, &blob(3)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let b = store.acquire_lease("gc", "b", ttl, false).await.unwrap().expect("expired, so taken over");
    assert!(b.token > a.token);
    let past = SystemTime::now();
    for refused in [
        store.renew_lease(&a).await.map(|_| ()),
        store.begin_blob_removals(&a, std::slice::from_ref(&loose), past).await.map(|_| ()),
        store.remove_unkept_manifest(&a, &r, &digest("none"), past).await.map(|_| ()),
    ] {
        assert!(matches!(refused, Err(MetadataError::Fenced(ref n)) if n == "gc"), "{refused:?}");
    }
    assert!(store.blob(&loose).await.unwrap().is_some(), "the stale holder changed nothing");
    // A stale holder's release leaves the lease with its holder.
    store.release_lease(&a, None).await.unwrap();
    assert_eq!(store.acquire_lease("gc", "c", ttl, false).await.unwrap(), None);
    // Released with a next run an hour away: free, but not due.
    store.release_lease(&b, Some(SystemTime::now() + Duration::from_secs(3600))).await.unwrap();
    assert_eq!(store.acquire_lease("gc", "c", ttl, true).await.unwrap(), None, "not due");
    let c = store.acquire_lease("gc", "c", ttl, false).await.unwrap().expect("free when not asked to be due");
    assert_eq!(
        store.begin_blob_removals(&c, std::slice::from_ref(&loose), past).await.unwrap(),
        vec![(loose.clone(), blob(3))]
    );
}

pub async fn blob_removals_go_in_batches_and_bytes_go_while_the_rows_are_held(store: Arc<dyn MetadataStore>) {
    let r = repo("batch/r");
    let digests: Vec<Digest> = (0..7).map(|i| digest(&format!("batch {i}"))).collect();
    for d in &digests {
        store.link_blob(&r, d, &blob(5)).await.unwrap();
    }
    let m = manifest("batch/r", "keeps 0", vec![(digests[0].clone(), 5)]);
    store.put_manifest(&m, &[tag("t")], &[]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let past = SystemTime::now();
    let lease = store.acquire_lease("gc", "batch", Duration::from_secs(60), false).await.unwrap().unwrap();
    let begun = store.begin_blob_removals(&lease, &digests, past).await.unwrap();
    let begun: Vec<Digest> = begun.into_iter().map(|(d, _)| d).collect();
    assert_eq!(begun, sorted(digests[1..].to_vec()), "all but the referenced one");
    assert_eq!(store.blob_in_repository(&r, &digests[1]).await.unwrap(), None, "unlinked at once");
    // Bytes that could not be deleted leave the removal to be finished later.
    let failing: &DeleteBytes<'_> = &|_| Box::pin(async { Err("store down".to_owned()) });
    assert!(store.finish_blob_removals(&lease, &begun, failing).await.is_err());
    assert_eq!(collectable(&*store, SystemTime::UNIX_EPOCH).await, begun, "still being removed");
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let deleting: &DeleteBytes<'_> = &{
        let seen = seen.clone();
        move |records| {
            seen.lock().unwrap().extend(records.into_iter().map(|(d, _)| d));
            Box::pin(async { Ok(()) })
        }
    };
    let removed = store.finish_blob_removals(&lease, &begun, deleting).await.unwrap();
    assert_eq!(removed.len(), 6);
    assert_eq!(*seen.lock().unwrap(), begun);
    assert_eq!(collectable(&*store, SystemTime::now()).await, Vec::<Digest>::new());
    assert!(store.finish_blob_removals(&lease, &begun, deleting).await.unwrap().is_empty(), "once only");
    assert!(store.blob(&digests[0]).await.unwrap().is_some());
}

pub async fn a_fixed_tag_never_moves(store: Arc<dyn MetadataStore>) {
    let (first, second) = (manifest("fixed/r", "first", Vec::new()), manifest("fixed/r", "second", Vec::new()));
    let v1 = [tag("v1")];
    assert_eq!(store.put_manifest(&first, &v1, &v1).await.unwrap(), PutManifest::Stored);
    assert_eq!(store.put_manifest(&first, &v1, &v1).await.unwrap(), PutManifest::Stored, "the same digest again");
    let moved = store.put_manifest(&second, &[tag("v1"), tag("other")], &v1).await.unwrap();
    assert_eq!(moved, PutManifest::TagFixed(tag("v1"), first.digest.clone()));
    assert_eq!(
        store.get_manifest(&repo("fixed/r"), &Reference::Digest(second.digest.clone()), false).await.unwrap(),
        None
    );
    assert_eq!(store.get_manifest(&repo("fixed/r"), &Reference::Tag(tag("other")), false).await.unwrap(), None);
    assert_eq!(store.tags_of(&repo("fixed/r"), &first.digest).await.unwrap(), vec![tag("v1")]);
    // Concurrent first pushes of a fixed tag: exactly one wins, the others are refused.
    let pushes = (0..6).map(|i| {
        let store = store.clone();
        async move {
            let m = manifest("fixed/race", &format!("racer {i}"), Vec::new());
            (m.digest.clone(), store.put_manifest(&m, &[tag("v2")], &[tag("v2")]).await.unwrap())
        }
    });
    let results = futures_util::future::join_all(pushes).await;
    let winners: Vec<&Digest> = results.iter().filter(|(_, r)| *r == PutManifest::Stored).map(|(d, _)| d).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let stored = store.get_manifest(&repo("fixed/race"), &Reference::Tag(tag("v2")), false).await.unwrap().unwrap();
    assert_eq!(&stored.digest, winners[0]);
    // Not fixed, a tag moves.
    assert_eq!(store.put_manifest(&second, &v1, &[]).await.unwrap(), PutManifest::Stored);
}

pub async fn quota_usage_counts_distinct_blobs_exactly(store: Arc<dyn MetadataStore>) {
    store.sync_quotas(&[("team".into(), 100), ("team/app".into(), 1000)]).await.unwrap();
    let check = async |team: u64| {
        let usage = store.usage().await.unwrap();
        assert_eq!(usage.iter().find(|u| u.namespace == "team").unwrap().bytes, team);
        for u in &usage {
            assert_eq!(store.recount_usage(&u.namespace).await.unwrap(), u.bytes, "{}", u.namespace);
        }
    };
    let (a, b, outside) = (repo("team/app"), repo("team/web"), repo("teammate/app"));
    let (shared, big, small) = (digest("shared 40"), digest("big 50"), digest("small 20"));
    store.link_blob(&a, &shared, &blob(40)).await.unwrap();
    store.link_blob(&b, &shared, &blob(40)).await.unwrap();
    store.link_blob(&outside, &small, &blob(20)).await.unwrap();
    check(40).await;
    store.link_blob(&b, &big, &blob(50)).await.unwrap();
    check(90).await;
    let refused = store.link_stored_blob(&a, &small, 20).await;
    let expected = QuotaExceeded { namespace: "team".into(), usage: 90, limit: 100, size: 20 };
    assert!(matches!(refused, Err(MetadataError::QuotaExceeded(ref q)) if *q == expected), "{refused:?}");
    assert!(matches!(store.mount_blob(&outside, &a, &small).await, Err(MetadataError::QuotaExceeded(_))));
    assert!(matches!(store.link_blob(&a, &digest("new 11"), &blob(11)).await, Err(MetadataError::QuotaExceeded(_))));
    assert_eq!(store.blob_in_repository(&a, &small).await.unwrap(), None);
    check(90).await;
    assert!(store.unlink_blob(&a, &shared).await.unwrap());
    check(90).await;
    assert!(store.unlink_blob(&b, &shared).await.unwrap());
    check(50).await;
    // Collected, a linked blob nothing references leaves the count.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(store.begin_blob_removal(&big, SystemTime::now()).await.unwrap(), Some(blob(50)));
    check(0).await;
    // Concurrent links: exactly as many as fit.
    let links = (0..24).map(|i| {
        let store = store.clone();
        async move { store.link_blob(&repo(&format!("team/r{}", i % 3)), &digest(&format!("five {i}")), &blob(5)).await }
    });
    let linked = futures_util::future::join_all(links).await;
    assert_eq!(linked.iter().filter(|r| r.is_ok()).count(), 20, "20 x 5 bytes fit in 100: {linked:?}");
    assert!(linked.iter().filter(|r| r.is_err()).all(|r| matches!(r, Err(MetadataError::QuotaExceeded(_)))));
    check(100).await;
    store.sync_quotas(&[("team".into(), 100)]).await.unwrap();
    assert_eq!(store.usage().await.unwrap().len(), 1, "a quota no longer configured is forgotten");
    check(100).await;
}

pub async fn retention_sees_push_and_pull_times(store: Arc<dyn MetadataStore>) {
    let r = repo("ret/r");
    let m = manifest("ret/r", "image", Vec::new());
    store.put_manifest(&m, &[tag("a"), tag("b")], &[]).await.unwrap();
    let infos = store.tag_infos(&r).await.unwrap();
    assert_eq!(infos.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    assert!(infos.iter().all(|t| t.pulled_at.is_none() && t.digest == m.digest));
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    store
        .record_pulls(&[
            (r.clone(), Reference::Tag(tag("a")), at),
            (r.clone(), Reference::Tag(tag("gone")), at),
            (repo("ret/none"), Reference::Tag(tag("a")), at),
        ])
        .await
        .unwrap();
    store.record_pulls(&[(r.clone(), Reference::Tag(tag("a")), at - Duration::from_secs(9))]).await.unwrap();
    let infos = store.tag_infos(&r).await.unwrap();
    assert_eq!(infos[0].pulled_at, Some(2_000_000_000_000), "never moves back");
    assert_eq!(infos[1].pulled_at, None);
    // A pull by digest counts for every tag of the manifest.
    let later = at + Duration::from_secs(1);
    store.record_pulls(&[(r.clone(), Reference::Digest(m.digest.clone()), later)]).await.unwrap();
    let infos = store.tag_infos(&r).await.unwrap();
    assert!(infos.iter().all(|t| t.pulled_at == Some(2_000_000_001_000)), "{infos:?}");
    // A tag pushed again since retention looked at it stays.
    let lease = store.acquire_lease("gc", "ret", Duration::from_secs(60), false).await.unwrap().unwrap();
    let stale = infos[0].clone();
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.put_manifest(&m, &[tag("a")], &[]).await.unwrap();
    assert!(!store.remove_tag(&lease, &r, &stale).await.unwrap());
    let fresh = store.tag_infos(&r).await.unwrap().remove(0);
    assert!(store.remove_tag(&lease, &r, &fresh).await.unwrap());
    assert_eq!(store.tags_of(&r, &m.digest).await.unwrap(), vec![tag("b")]);
}

pub async fn the_ui_searches_summarises_and_pages_tags(store: Arc<dyn MetadataStore>) {
    let names = ["lib/app", "lib/app-db", "lib_x/app", "libx", "other/lib", "lib"];
    for (i, name) in names.iter().enumerate() {
        store.link_blob(&repo(name), &digest("shared"), &blob(100)).await.unwrap();
        store.link_blob(&repo(name), &digest(name), &blob(i as u64 + 1)).await.unwrap();
    }
    let items = |page: Page| page.items;
    let search = |filter, last, limit| {
        let store = store.clone();
        async move { items(store.search_repositories(filter, last, limit).await.unwrap()) }
    };
    assert_eq!(search(NameMatch::Prefix("lib/"), None, 10).await, ["lib/app", "lib/app-db"]);
    assert_eq!(search(NameMatch::Prefix("lib"), Some("lib/app-db"), 10).await, ["lib_x/app", "libx"]);
    // `_` and `%` are characters, not wildcards.
    assert_eq!(search(NameMatch::Contains("_"), None, 10).await, ["lib_x/app"]);
    assert!(search(NameMatch::Contains("%"), None, 10).await.is_empty());
    assert_eq!(search(NameMatch::Contains("app"), None, 2).await, ["lib/app", "lib/app-db"]);
    assert_eq!(search(NameMatch::Contains("app"), Some("lib/app-db"), 2).await, ["lib_x/app"]);
    assert_eq!(search(NameMatch::All, Some("libx"), 10).await, ["other/lib"]);

    // A manifest with two tags, pushed one after the other.
    let m = manifest("lib/app", "m", vec![(digest("lib/app"), 1)]);
    store.put_manifest(&m, &[tag("b")], &[]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.put_manifest(&m, &[tag("a")], &[]).await.unwrap();
    let wanted = ["lib/app".to_owned(), "libx".to_owned(), "missing".to_owned()];
    let summaries = store.repository_summaries(&wanted).await.unwrap();
    assert_eq!(summaries.len(), 2, "a missing repository has no summary");
    assert_eq!((summaries[0].name.as_str(), summaries[0].tags, summaries[0].bytes), ("lib/app", 2, 101));
    assert!(summaries[0].last_push.is_some());
    assert_eq!(
        (summaries[1].name.as_str(), summaries[1].tags, summaries[1].bytes, summaries[1].last_push),
        ("libx", 0, 104, None)
    );
    // Distinct blobs: the shared one once.
    assert_eq!(store.namespace_size("lib").await.unwrap(), (100 + 6 + 1 + 2, 3));
    assert_eq!(store.namespace_size("").await.unwrap(), (100 + 21, 6));
    assert_eq!(store.namespace_size("nothing").await.unwrap(), (0, 0));

    let page = store.tag_page(&repo("lib/app"), TagOrder::Pushed, 0, 10).await.unwrap().unwrap();
    assert_eq!(page.len(), 2);
    assert_eq!(page.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["a", "b"], "newest push first");
    assert_eq!((page[0].digest.clone(), page[0].payload.as_slice(), page[0].size), (m.digest.clone(), &b"m"[..], 1));
    let page = store.tag_page(&repo("lib/app"), TagOrder::Name, 1, 10).await.unwrap().unwrap();
    assert_eq!(page.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["b"], "an offset skips");
    assert_eq!(store.tag_page(&repo("missing"), TagOrder::Name, 0, 10).await.unwrap(), None);
}

async fn sqlite() -> (Arc<dyn MetadataStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("meta.db").display());
    let store = berth::metadata::sql::SqlMetadata::connect(&url, true).await.unwrap();
    (Arc::new(store), dir)
}

/// The whole case list, for every backend.
macro_rules! metadata_store_contract {
    ($backend:ident, $make:ident) => {
        contract!(
            $backend,
            $make,
            [
                blob_links_are_per_repository,
                mounts_need_the_blob_in_the_source,
                a_manifest_with_missing_references_stores_nothing,
                manifests_and_tags,
                listings_are_sorted_and_paged,
                referrers_by_subject_and_artifact_type,
                blobs_nothing_references_are_collected_and_nothing_else,
                untagged_manifests_nothing_keeps_are_removed_and_nothing_else,
                the_lease_fences_its_holder_once_taken_over,
                blob_removals_go_in_batches_and_bytes_go_while_the_rows_are_held,
                a_fixed_tag_never_moves,
                quota_usage_counts_distinct_blobs_exactly,
                retention_sees_push_and_pull_times,
                the_ui_searches_summarises_and_pages_tags,
            ]
        );
    };
}

metadata_store_contract!(sqlite, sqlite);

async fn postgres() -> (Arc<dyn MetadataStore>, ()) {
    let url = crate::pgsupport::fresh_database().await;
    (Arc::new(berth::metadata::sql::SqlMetadata::connect(&url, true).await.unwrap()), ())
}

metadata_store_contract!(postgres, postgres);
