"""What a run tells its readers: the live console view (`live`), alerts and webhooks
(`alerts`), the JUnit and Code Quality CI reports (`ci`) and the HTML report (`html`)."""
