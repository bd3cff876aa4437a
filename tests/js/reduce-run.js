// Shared by the reducer tests: apply frames one after the other, keeping each result.
import { initialState, reduce } from "../../static/conferences/room-state.js";

export function run(frames, start = initialState()) {
  let current = start;
  const results = [];
  for (const frame of frames) {
    const result = reduce(current, frame);
    current = result.state;
    results.push(result);
  }
  return { state: current, results };
}
