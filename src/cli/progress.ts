/**
 * A one-line byte counter on stderr for long transfers: shown only on a terminal, once more than a few MiB have
 * moved, redrawn at most 5 times a second; the final count stays on screen.
 */
const MIB = 1024 * 1024;
const fmt = (n: number) => (n >= 1024 * MIB ? `${(n / (1024 * MIB)).toFixed(2)} GiB` : `${(n / MIB).toFixed(1)} MiB`);

export class ByteProgress {
  private bytes = 0;
  private shown = false;
  private drawnAt = 0;
  private readonly t0 = Date.now();

  constructor(
    private readonly enabled: boolean,
    private readonly label: string,
    private readonly threshold = 4 * MIB,
  ) {}

  /** The running total of bytes moved. */
  update = (total: number): void => {
    this.bytes = total;
    if (!this.enabled || total < this.threshold) return;
    const now = Date.now();
    if (this.shown && now - this.drawnAt < 200) return;
    this.drawnAt = now;
    this.shown = true;
    this.draw();
  };

  /** The final count (if a line was shown), ending the line. */
  finish(): void {
    if (!this.shown) return;
    this.draw();
    this.end();
  }

  /** End a shown line without redrawing it (the copy failed). */
  end(): void {
    if (this.shown) process.stderr.write("\n");
    this.shown = false;
  }

  private draw(): void {
    const secs = Math.max((Date.now() - this.t0) / 1000, 0.001);
    process.stderr.write(`\r\x1b[Ksmolvm: ${this.label}: ${fmt(this.bytes)} copied (${fmt(this.bytes / secs)}/s)`);
  }
}
