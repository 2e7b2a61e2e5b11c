"""The LaMP-style dual-expert policy: loader, model parts, trainer, closed-loop evaluation."""
