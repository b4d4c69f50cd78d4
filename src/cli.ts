// socket-proxyd's command line: a drop-in for systemd-socket-proxyd.
// Parses argv (options.ts) and hands over to the daemon (daemon.ts).
// A bad command line: one line on stderr, exit status 1, as the original.
import { stderrIsJournal } from './log';
import { PROGRAM, UsageError, helpText, parseCommandLine, versionText } from './options';

function fail(message: string): never {
  process.stderr.on('error', () => {});
  // Under systemd an error is an error in the journal too, like the daemon's own lines.
  // One line, as the daemon's logger writes them: a value with a newline in it must not split the
  // message (under the journal the second half would lose its priority).
  process.stderr.write(`${stderrIsJournal() ? '<3>' : ''}${message.replace(/\n/g, ' ')}\n`);
  process.exit(1);
}

/** --help/--version output: a reader that went away (EPIPE) or a full disk is not a crash. */
function print(text: string): void {
  process.stdout.on('error', () => {});
  process.stdout.write(text);
}

async function main(argv: string[]): Promise<void> {
  let parsed;
  try {
    parsed = parseCommandLine(argv);
  } catch (error) {
    if (error instanceof UsageError) {
      // getopt's own complaints name the program, like the original's do.
      const getopt = /^(unrecognized option|invalid option|option )/.test(error.message);
      fail(getopt ? `${PROGRAM}: ${error.message}` : error.message);
    }
    throw error;
  }
  if (parsed.action === 'help') {
    print(helpText());
    return;
  }
  if (parsed.action === 'version') {
    print(versionText());
    return;
  }
  // Loaded only now: --help and bad command lines need no addon.
  const { runDaemon } = await import('./daemon');
  await runDaemon(parsed.options);
}

// bin/socket-proxyd requires this file: running it is the point.
main(process.argv.slice(2)).catch((error: unknown) => fail(error instanceof Error ? error.message : String(error)));
